// Coverage pass, drawn after the points on the far plane: a subtle screen-space checker that stays visible only where no memory point covers a pixel,
// so the viewer sees which parts of the view the memory does not explain yet.
#if defined VERTEX_SHADER
void main() {
    // one triangle covering the viewport, from the vertex id alone (no vertex buffer)
    vec2 p = vec2(float((gl_VertexID << 1) & 2), float(gl_VertexID & 2));
    gl_Position = vec4(p * 2.0 - 1.0, 1.0, 1.0);  // on the far plane: drawn only where depth is still clear
}
#elif defined FRAGMENT_SHADER
uniform vec3 color_a;
uniform vec3 color_b;
uniform float cell_px;
uniform vec2 origin;  // viewport origin in window pixels, so the checker is anchored to the view
out vec4 f_color;
void main() {
    vec2 cell = floor((gl_FragCoord.xy - origin) / cell_px);
    f_color = vec4(mix(color_a, color_b, mod(cell.x + cell.y, 2.0)), 1.0);
}
#endif
