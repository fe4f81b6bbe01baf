// Memory points as sprites whose size is the projected voxel footprint: world_size * focal / depth, clamped.
#if defined VERTEX_SHADER
uniform mat4 mvp;          // projection(K, viewport) * w2c: gl_Position.w is the camera-space depth z
uniform float focal_px;    // focal length in viewport pixels
uniform float world_size;  // sprite diameter in metres (voxel size times the LOD and style scale)
uniform vec2 size_range;   // [min, max] sprite size in pixels
in vec3 in_xyz;
in vec4 in_rgba;
out vec3 v_rgb;
void main() {
    gl_Position = mvp * vec4(in_xyz, 1.0);
    gl_PointSize = clamp(world_size * focal_px / max(gl_Position.w, 1e-6), size_range.x, size_range.y);
    v_rgb = in_rgba.rgb;
}
#elif defined FRAGMENT_SHADER
uniform bool round_points;  // discard sprite corners (costs early depth rejection on software GL)
in vec3 v_rgb;
out vec4 f_color;
void main() {
    if (round_points) {
        vec2 d = gl_PointCoord - 0.5;
        if (dot(d, d) > 0.25) discard;
    }
    f_color = vec4(v_rgb, 1.0);
}
#endif
