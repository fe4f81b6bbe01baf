// A texture drawn into a rectangle of the viewport (frame panel, HUD), with a global alpha for blending.
#if defined VERTEX_SHADER
uniform vec4 rect;  // x0, y0, x1, y1 in normalised device coordinates
out vec2 v_uv;
void main() {
    vec2 corner = vec2(float(gl_VertexID & 1), float((gl_VertexID >> 1) & 1));  // triangle strip
    v_uv = vec2(corner.x, 1.0 - corner.y);  // textures hold images top row first
    gl_Position = vec4(mix(rect.xy, rect.zw, corner), 0.0, 1.0);
}
#elif defined FRAGMENT_SHADER
uniform sampler2D image;
uniform float alpha;
in vec2 v_uv;
out vec4 f_color;
void main() {
    vec4 c = texture(image, v_uv);
    f_color = vec4(c.rgb, c.a * alpha);
}
#endif
