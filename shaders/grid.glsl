// Ground grid on the floor plane y = 0: one quad around the camera, lines drawn analytically per fragment
// (anti-aliased with screen-space derivatives) and faded with distance, the x axis red and the z axis blue.
#if defined VERTEX_SHADER
uniform mat4 mvp;
uniform vec2 center_xz;  // quad centre under the camera
uniform float extent;    // half size of the quad in metres
out vec2 v_xz;
void main() {
    vec2 corner = vec2(float(gl_VertexID & 1), float((gl_VertexID >> 1) & 1)) * 2.0 - 1.0;  // triangle strip
    v_xz = center_xz + corner * extent;
    gl_Position = mvp * vec4(v_xz.x, 0.0, v_xz.y, 1.0);
}
#elif defined FRAGMENT_SHADER
uniform float spacing;   // metres between lines
uniform vec2 eye_xz;
uniform float fade;      // distance at which lines vanish
uniform vec4 line_color;
in vec2 v_xz;
out vec4 f_color;
void main() {
    vec2 g = v_xz / spacing;
    vec2 w = max(fwidth(g), vec2(1e-6));
    vec2 d = abs(fract(g - 0.5) - 0.5) / w;
    float line = 1.0 - min(min(d.x, d.y), 1.0);
    vec2 axis = abs(v_xz) / max(fwidth(v_xz), vec2(1e-6));
    vec3 rgb = line_color.rgb;
    if (axis.y < 1.0) rgb = vec3(0.85, 0.3, 0.3);  // z = 0: the x axis
    if (axis.x < 1.0) rgb = vec3(0.3, 0.45, 0.9);  // x = 0: the z axis
    float dense = clamp(1.5 - 2.0 * max(w.x, w.y), 0.0, 1.0);  // drop lines closer than ~2 px (moire)
    float a = line * line_color.a * dense * clamp(1.0 - length(v_xz - eye_xz) / fade, 0.0, 1.0);
    if (a <= 0.0) discard;
    f_color = vec4(rgb, a);
}
#endif
