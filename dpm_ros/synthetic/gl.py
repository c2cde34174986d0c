"""OpenGL renderer (moderngl, headless EGL) for synthetic scenes: colour, camera-frame points and labels in one pass.

Each primitive is drawn as its bounding box; the fragment shader casts the pixel's ray ``K^-1 (u, v, 1)`` (pixel
centres, u = gl_FragCoord.x - 0.5, v = H - gl_FragCoord.y - 0.5) and intersects it analytically with the primitive
in its local frame, exactly as ``raycast.py`` does, so both renderers give the same geometry (up to fp32). Depth is
written from the analytic hit (z / far) so the nearest surface wins. One context per process (created lazily; safe
in forked data-loader workers because each process creates its own).
"""
from __future__ import annotations

import os
import threading

import numpy as np

from .raycast import NEAR
from .scene import N_WAVES, Scene, invert_pose

FAR = 1000.0

_VERTEX = """
#version 330
in vec3 in_pos;                 // unit cube corner in [-1, 1]^3
uniform vec3 size;
uniform mat4 T_c_l;             // local -> camera
uniform mat4 proj;
void main() {
    gl_Position = proj * (T_c_l * vec4(in_pos * size * 1.001, 1.0));
}
"""

_FRAGMENT = """
#version 330
uniform int kind;               // 0 room (inside), 1 box, 2 ellipsoid
uniform bool open_top;
uniform vec3 size;
uniform mat4 T_l_c;             // camera -> local
uniform mat3 R_w_l;             // local -> world rotation
uniform mat3 Kinv;
uniform float height;
uniform float label;
uniform vec3 color_a;
uniform vec3 color_b;
uniform float checker_scale;
uniform float checker_weight;
uniform vec4 waves[N_WAVES];
uniform float wave_amps[N_WAVES];
uniform vec3 light_dir;
uniform vec3 light_color;
uniform float ambient;
uniform float diffuse;
layout(location = 0) out vec4 out_color;
layout(location = 1) out vec4 out_point;

void main() {
    vec3 dc = Kinv * vec3(gl_FragCoord.x - 0.5, height - gl_FragCoord.y - 0.5, 1.0);
    vec3 o = T_l_c[3].xyz;
    vec3 d = mat3(T_l_c) * dc;
    float t;
    vec3 n;
    if (kind == 2) {
        vec3 os = o / size, ds = d / size;
        float a = dot(ds, ds), b = dot(os, ds), c = dot(os, os) - 1.0;
        float disc = b * b - a * c;
        if (disc < 0.0 || b >= 0.0 || c <= 0.0) discard;
        t = c / (-b + sqrt(disc));
        if (t <= NEAR) discard;
        vec3 p = o + t * d;
        n = normalize(p / (size * size));
    } else {
        vec3 inv = 1.0 / d;
        vec3 t0 = (-size - o) * inv, t1 = (size - o) * inv;
        vec3 lo = min(t0, t1), hi = max(t0, t1);
        float tmin = max(max(lo.x, lo.y), lo.z);
        float tmax = min(min(hi.x, hi.y), hi.z);
        if (tmax < tmin) discard;
        if (kind == 1) {
            if (tmin <= NEAR) discard;
            t = tmin;
        } else {
            if (tmax <= NEAR) discard;
            if (open_top && hi.z < hi.x && hi.z < hi.y && d.z > 0.0) discard;
            t = tmax;
        }
        vec3 p = o + t * d;
        vec3 rel = abs(p) / size;
        int axis = (rel.x >= rel.y && rel.x >= rel.z) ? 0 : ((rel.y >= rel.z) ? 1 : 2);
        n = vec3(0.0);
        n[axis] = sign(p[axis]);
        if (kind == 0) n = -n;
    }
    vec3 p = o + t * d;
    vec3 cells3 = floor(p * checker_scale);
    float cells = cells3.x + cells3.y + cells3.z;
    float checker = cells - 2.0 * floor(cells / 2.0);
    float wave = 0.0;
    for (int i = 0; i < N_WAVES; ++i) wave += wave_amps[i] * sin(dot(p, waves[i].xyz) + waves[i].w);
    float m = clamp(0.5 + checker_weight * (checker - 0.5) + wave, 0.0, 1.0);
    vec3 albedo = color_a * (1.0 - m) + color_b * m;
    float lam = max(dot(R_w_l * n, light_dir), 0.0);
    out_color = vec4(clamp(albedo * light_color * (ambient + diffuse * lam), 0.0, 1.0), 1.0);
    out_point = vec4(dc * t, label);
    gl_FragDepth = clamp(t / FAR, 0.0, 1.0);   // dc.z = 1, so t is the depth z
}
""".replace("N_WAVES", str(N_WAVES)).replace("NEAR", repr(NEAR)).replace("FAR", repr(FAR))

# 12 triangles of the cube [-1, 1]^3 (culling is off: the camera may be inside a bounding box)
_CUBE = np.array([[[-1, -1, -1], [1, -1, -1], [1, 1, -1]], [[-1, -1, -1], [1, 1, -1], [-1, 1, -1]],
                  [[-1, -1, 1], [1, 1, 1], [1, -1, 1]], [[-1, -1, 1], [-1, 1, 1], [1, 1, 1]],
                  [[-1, -1, -1], [-1, 1, 1], [-1, -1, 1]], [[-1, -1, -1], [-1, 1, -1], [-1, 1, 1]],
                  [[1, -1, -1], [1, -1, 1], [1, 1, 1]], [[1, -1, -1], [1, 1, 1], [1, 1, -1]],
                  [[-1, -1, -1], [-1, -1, 1], [1, -1, 1]], [[-1, -1, -1], [1, -1, 1], [1, -1, -1]],
                  [[-1, 1, -1], [1, 1, 1], [-1, 1, 1]], [[-1, 1, -1], [1, 1, -1], [1, 1, 1]]], dtype="f4")


def projection(K: np.ndarray, height: int, width: int) -> np.ndarray:
    """4×4 OpenGL clip matrix for an optical camera with intrinsics K: pixel centre (u, v) maps to the window
    position (u + 0.5, H - v - 0.5); clip w = z."""
    fx, fy, cx, cy, s = K[0, 0], K[1, 1], K[0, 2], K[1, 2], K[0, 1]
    n, f = NEAR, FAR
    return np.array([[2 * fx / width, 2 * s / width, 2 * (cx + 0.5) / width - 1, 0],
                     [0, -2 * fy / height, 1 - 2 * (cy + 0.5) / height, 0],
                     [0, 0, (f + n) / (f - n), -2 * f * n / (f - n)],
                     [0, 0, 1, 0]])


def _mat(m: np.ndarray) -> bytes:
    """Column-major float32 bytes of a matrix (GLSL layout)."""
    return np.ascontiguousarray(np.asarray(m, dtype=np.float32).T).tobytes()


class GLRenderer:
    """Headless OpenGL renderer; ``render`` has the same contract as ``raycast.render_raycast``."""

    def __init__(self):
        import moderngl

        self.ctx = moderngl.create_context(standalone=True, backend="egl")
        self.prog = self.ctx.program(vertex_shader=_VERTEX, fragment_shader=_FRAGMENT)
        self.vbo = self.ctx.buffer(_CUBE.tobytes())
        self.vao = self.ctx.vertex_array(self.prog, [(self.vbo, "3f", "in_pos")])
        self._fbos: dict[tuple[int, int], object] = {}
        self.pid = os.getpid()

    def _fbo(self, height: int, width: int):
        key = (height, width)
        if key not in self._fbos:
            if len(self._fbos) > 8:
                for fbo in self._fbos.values():
                    fbo.release()
                self._fbos.clear()
            self._fbos[key] = self.ctx.framebuffer(
                color_attachments=[self.ctx.renderbuffer((width, height), 4, dtype="f1"),
                                   self.ctx.renderbuffer((width, height), 4, dtype="f4")],
                depth_attachment=self.ctx.depth_renderbuffer((width, height)))
        return self._fbos[key]

    def render(self, scene: Scene, t: float, T_w_c: np.ndarray, K: np.ndarray, height: int, width: int) -> dict:
        """Render at time t (s) from ``T_w_c`` (4×4 camera-to-world, optical). Same outputs as the ray-caster."""
        import moderngl

        fbo = self._fbo(height, width)
        fbo.use()
        self.ctx.viewport = (0, 0, width, height)
        fbo.clear(0.0, 0.0, 0.0, -1.0, depth=1.0)
        self.ctx.enable(moderngl.DEPTH_TEST)
        self.ctx.disable(moderngl.CULL_FACE)
        prog = self.prog
        prog["proj"].write(_mat(projection(K, height, width)))
        prog["Kinv"].write(_mat(np.linalg.inv(K)))
        prog["height"].value = float(height)
        light = scene.light
        prog["light_dir"].value = tuple(light.direction)
        prog["light_color"].value = tuple(light.color)
        prog["ambient"].value = float(light.ambient)
        prog["diffuse"].value = float(light.diffuse)
        for prim in scene.primitives:
            T_w_l = prim.pose(t)
            T_l_c = invert_pose(T_w_l) @ T_w_c
            prog["kind"].value = int(prim.kind)
            prog["open_top"].value = bool(prim.open_top)
            prog["size"].value = tuple(prim.size)
            prog["T_l_c"].write(_mat(T_l_c))
            prog["T_c_l"].write(_mat(invert_pose(T_l_c)))
            prog["R_w_l"].write(_mat(T_w_l[:3, :3]))
            prog["label"].value = float(prim.label)
            prog["color_a"].value = tuple(prim.color_a)
            prog["color_b"].value = tuple(prim.color_b)
            prog["checker_scale"].value = float(prim.checker_scale)
            prog["checker_weight"].value = float(prim.checker_weight)
            prog["waves"].write(np.asarray(prim.waves, dtype="f4").tobytes())
            prog["wave_amps"].write(np.asarray(prim.wave_amps, dtype="f4").tobytes())
            self.vao.render(moderngl.TRIANGLES)
        rgb = np.frombuffer(fbo.read(components=3, attachment=0, alignment=1), np.uint8)
        pts = np.frombuffer(fbo.read(components=4, attachment=1, dtype="f4"), np.float32)
        rgb = rgb.reshape(height, width, 3)[::-1]
        pts = pts.reshape(height, width, 4)[::-1]
        labels = np.rint(pts[..., 3]).astype(np.int32)
        points = np.where((labels >= 0)[..., None], pts[..., :3], np.nan).astype(np.float32)
        return {"points": points, "labels": labels, "rgb": np.ascontiguousarray(rgb)}


_renderers: dict[int, GLRenderer] = {}   # thread id -> renderer: an EGL context is current in one thread only


def get_renderer() -> GLRenderer:
    """This thread's GL renderer (created on first use; EGL contexts are bound to the thread that made them current,
    so a renderer used from another thread, e.g. the node's inference worker, returns garbage). A process forked
    from one that already had a GL context cannot create its own (Mesa's EGL state does not survive fork: it
    deadlocks), so this raises there and ``render`` falls back to the ray-caster; processes forked before any GL use
    (or spawned) get their own context."""
    if any(r.pid != os.getpid() for r in _renderers.values()):
        raise RuntimeError("this process was forked from one holding an OpenGL context (EGL cannot be re-created "
                           "after fork); use the 'spawn' start method, or render only in the workers")
    key = threading.get_ident()
    if key not in _renderers:
        _renderers[key] = GLRenderer()
    return _renderers[key]
