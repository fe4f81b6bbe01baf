// The camera path so far, as a line strip through the camera centres.
#if defined VERTEX_SHADER
uniform mat4 mvp;
in vec3 in_xyz;
void main() {
    gl_Position = mvp * vec4(in_xyz, 1.0);
}
#elif defined FRAGMENT_SHADER
uniform vec4 color;
out vec4 f_color;
void main() {
    f_color = color;
}
#endif
