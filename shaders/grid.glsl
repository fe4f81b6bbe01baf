// Ground grid on the floor plane y = 0: line segments every `spacing` metres around the camera, faded with
// distance; the x axis red and the z axis blue. Lines (not a shaded quad) keep the cost to the pixels they touch,
// which matters on software OpenGL.
#if defined VERTEX_SHADER
uniform mat4 mvp;
uniform vec2 center_xz;  // grid centre under the camera, snapped to the spacing so lines stay still
uniform float spacing;
uniform vec4 line_color;
in vec2 in_local;        // endpoint in grid units around the centre
in float in_along_z;     // 0: the line runs along x (constant z); 1: along z (constant x)
out vec2 v_xz;
out vec3 v_rgb;
void main() {
    v_xz = center_xz + in_local * spacing;
    float across = in_along_z > 0.5 ? v_xz.x : v_xz.y;  // the coordinate that is constant on this line
    v_rgb = line_color.rgb;
    if (abs(across) < 0.5 * spacing) {
        v_rgb = in_along_z > 0.5 ? vec3(0.3, 0.45, 0.9) : vec3(0.85, 0.3, 0.3);
    }
    gl_Position = mvp * vec4(v_xz.x, 0.0, v_xz.y, 1.0);
}
#elif defined FRAGMENT_SHADER
uniform vec2 eye_xz;
uniform float fade;      // distance at which lines vanish
uniform vec4 line_color;
in vec2 v_xz;
in vec3 v_rgb;
out vec4 f_color;
void main() {
    float a = line_color.a * clamp(1.0 - length(v_xz - eye_xz) / fade, 0.0, 1.0);
    if (a <= 0.0) discard;
    f_color = vec4(v_rgb, a);
}
#endif
