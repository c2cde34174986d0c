"""OpenGL renderer (moderngl, headless EGL) for synthetic scenes: colour, camera-frame points and labels in one pass.

One full-screen pass: each fragment casts its pixel's ray ``K^-1 (u, v, 1)`` (pixel centres: u = gl_FragCoord.x - 0.5,
v = H - gl_FragCoord.y - 0.5), intersects it analytically with every primitive (a uniform block of per-primitive
records) in that primitive's local frame and shades the nearest hit, exactly as ``raycast.py`` does, so both
renderers give the same geometry (up to fp32) and almost the same colours. One context per thread, created lazily.
"""
from __future__ import annotations

import os
import threading

import numpy as np

from dpm_ros.se3 import invert_se3

from .raycast import NEAR, SHADOW_OFFSET
from .scene import N_WAVES, Scene

MAX_PRIMS = 64        # primitives per scene (a uniform block of 64 records of 208 bytes)
_FLOATS = 52          # floats per record, std140: mat4 + 4 vec4 + vec4[N_WAVES] + vec4

_VERTEX = """
#version 330
void main() {   // one triangle covering the viewport
    vec2 p = vec2(float((gl_VertexID & 1) << 2) - 1.0, float((gl_VertexID & 2) << 1) - 1.0);
    gl_Position = vec4(p, 0.0, 1.0);
}
"""

_FRAGMENT = """
#version 330
struct Prim {
    mat4 T_l_c;       // camera -> local
    vec4 size_kind;   // half-extents / radii, kind (0 room from inside, 1 box, 2 ellipsoid, 3 cylinder)
    vec4 color_a;     // albedo a, instance label
    vec4 color_b;     // albedo b, checker cells per metre
    vec4 misc;        // checker weight, open top
    vec4 waves[N_WAVES];
    vec4 wave_amps;
};
layout(std140) uniform Prims { Prim prims[MAX_PRIMS]; };
uniform int n_prims;
uniform mat3 Kinv;
uniform float height;
uniform vec3 light_cam;         // unit vector towards the light, camera frame
uniform bool shadows;
uniform vec3 light_color;
uniform float ambient;
uniform float diffuse;
layout(location = 0) out vec4 out_color;
layout(location = 1) out vec4 out_point;

const float MISS = 1e30;

float intersect(int i, vec3 o, vec3 d) {   // mirrors raycast.intersect
    vec3 size = prims[i].size_kind.xyz;
    int kind = int(prims[i].size_kind.w);
    if (kind == 2) {
        vec3 os = o / size, ds = d / size;
        float a = dot(ds, ds), b = dot(os, ds), c = dot(os, os) - 1.0;
        float disc = b * b - a * c;
        if (disc < 0.0 || b >= 0.0 || c <= 0.0) return MISS;
        float t = c / (-b + sqrt(disc));
        return t > NEAR ? t : MISS;
    }
    if (kind == 3) {
        float h = size.z;
        vec2 os = o.xy / size.xy, ds = d.xy / size.xy;
        float a = dot(ds, ds), b = dot(os, ds), c = dot(os, os) - 1.0;
        float disc = b * b - a * c;
        float t = MISS;
        if (disc >= 0.0 && b < 0.0 && c > 0.0) {
            float ts = c / (-b + sqrt(disc));
            if (abs(o.z + ts * d.z) <= h && ts > NEAR) t = ts;
        }
        if (abs(o.z) > h) {
            float tc = ((d.z < 0.0 ? h : -h) - o.z) / d.z;
            vec2 q = (o.xy + tc * d.xy) / size.xy;
            if (dot(q, q) <= 1.0 && tc > NEAR) t = min(t, tc);
        }
        return t;
    }
    vec3 inv = 1.0 / d;
    vec3 t0 = (-size - o) * inv, t1 = (size - o) * inv;
    vec3 lo = min(t0, t1), hi = max(t0, t1);
    float tmin = max(max(lo.x, lo.y), lo.z);
    float tmax = min(min(hi.x, hi.y), hi.z);
    if (tmax < tmin) return MISS;
    if (kind == 1) return tmin > NEAR ? tmin : MISS;
    if (tmax <= NEAR) return MISS;
    if (prims[i].misc.y > 0.5 && hi.z < hi.x && hi.z < hi.y && d.z > 0.0) return MISS;
    return tmax;
}

void main() {
    vec3 dc = Kinv * vec3(gl_FragCoord.x - 0.5, height - gl_FragCoord.y - 0.5, 1.0);
    float best = MISS;
    int bi = -1;
    for (int i = 0; i < n_prims; ++i) {
        float t = intersect(i, prims[i].T_l_c[3].xyz, mat3(prims[i].T_l_c) * dc);
        if (t < best) { best = t; bi = i; }
    }
    if (bi < 0) { out_color = vec4(0.0); out_point = vec4(0.0, 0.0, 0.0, -1.0); return; }
    vec3 size = prims[bi].size_kind.xyz;
    int kind = int(prims[bi].size_kind.w);
    vec3 p = prims[bi].T_l_c[3].xyz + best * (mat3(prims[bi].T_l_c) * dc);
    vec3 n;
    if (kind == 2) {
        n = normalize(p / (size * size));
    } else if (kind == 3) {
        n = abs(p.z) / size.z > length(p.xy / size.xy) ? vec3(0.0, 0.0, sign(p.z))
                                                        : normalize(vec3(p.xy / (size.xy * size.xy), 0.0));
    } else {
        vec3 rel = abs(p) / size;
        int axis = (rel.x >= rel.y && rel.x >= rel.z) ? 0 : ((rel.y >= rel.z) ? 1 : 2);
        n = vec3(0.0);
        n[axis] = sign(p[axis]);
        if (kind == 0) n = -n;
    }
    vec3 cells3 = floor(p * prims[bi].color_b.w);
    float cells = cells3.x + cells3.y + cells3.z;
    float checker = cells - 2.0 * floor(cells / 2.0);
    float wave = 0.0;
    for (int k = 0; k < N_WAVES; ++k)
        wave += prims[bi].wave_amps[k] * sin(dot(p, prims[bi].waves[k].xyz) + prims[bi].waves[k].w);
    float m = clamp(0.5 + prims[bi].misc.x * (checker - 0.5) + wave, 0.0, 1.0);
    vec3 albedo = prims[bi].color_a.rgb * (1.0 - m) + prims[bi].color_b.rgb * m;
    vec3 n_c = transpose(mat3(prims[bi].T_l_c)) * n;
    float lam = max(dot(n_c, light_cam), 0.0);
    if (shadows && lam > 0.0) {   // mirrors raycast.shadowed
        vec3 so = dc * best + n_c * SHADOW_OFFSET;
        for (int j = 0; j < n_prims; ++j) {
            if (j == bi || int(prims[j].size_kind.w) == 0) continue;
            if (intersect(j, (prims[j].T_l_c * vec4(so, 1.0)).xyz, mat3(prims[j].T_l_c) * light_cam) < MISS) {
                lam = 0.0;
                break;
            }
        }
    }
    out_color = vec4(clamp(albedo * light_color * (ambient + diffuse * lam), 0.0, 1.0), 1.0);
    out_point = vec4(dc * best, prims[bi].color_a.w);   // dc.z = 1: best is the depth z
}
""".replace("N_WAVES", str(N_WAVES)).replace("MAX_PRIMS", str(MAX_PRIMS)).replace("NEAR", repr(NEAR)) \
    .replace("SHADOW_OFFSET", repr(SHADOW_OFFSET))


def _mat(m: np.ndarray) -> bytes:
    """Column-major float32 bytes of a matrix (GLSL layout)."""
    return np.ascontiguousarray(np.asarray(m, dtype=np.float32).T).tobytes()


def pack_primitives(scene: Scene, t: float, T_w_c: np.ndarray) -> np.ndarray:
    """(n, 68) float32 std140 records of the scene's primitives at time t (s) for the camera pose ``T_w_c``."""
    n = len(scene.primitives)
    if n > MAX_PRIMS:
        raise ValueError(f"the GL renderer takes at most {MAX_PRIMS} primitives, the scene has {n}")
    rec = np.zeros((n, _FLOATS), np.float64)
    for i, prim in enumerate(scene.primitives):
        T_w_l = prim.pose(t)
        rec[i, 0:16] = (invert_se3(T_w_l) @ T_w_c).T.ravel()   # column-major
        rec[i, 16:20] = (*prim.size, prim.kind)
        rec[i, 20:24] = (*prim.color_a, prim.label)
        rec[i, 24:28] = (*prim.color_b, prim.checker_scale)
        rec[i, 28:30] = (prim.checker_weight, float(prim.open_top))
        rec[i, 32:32 + 4 * N_WAVES] = prim.waves.ravel()
        rec[i, 32 + 4 * N_WAVES:32 + 5 * N_WAVES] = prim.wave_amps
    return rec.astype(np.float32)


class GLRenderer:
    """Headless OpenGL renderer; ``render`` has the same contract as ``raycast.render_raycast``."""

    def __init__(self):
        import moderngl

        self.ctx = moderngl.create_context(standalone=True, backend="egl")
        self.prog = self.ctx.program(vertex_shader=_VERTEX, fragment_shader=_FRAGMENT)
        self.ubo = self.ctx.buffer(reserve=MAX_PRIMS * _FLOATS * 4, dynamic=True)
        self.prog["Prims"].binding = 0
        self.vao = self.ctx.vertex_array(self.prog, [])
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
                                   self.ctx.renderbuffer((width, height), 4, dtype="f4")])
        return self._fbos[key]

    def render(self, scene: Scene, t: float, T_w_c: np.ndarray, K: np.ndarray, height: int, width: int) -> dict:
        """Render at time t (s) from ``T_w_c`` (4×4 camera-to-world, optical). Same outputs as the ray-caster."""
        import moderngl

        records = pack_primitives(scene, t, T_w_c)
        fbo = self._fbo(height, width)
        fbo.use()
        self.ctx.viewport = (0, 0, width, height)
        self.ubo.write(records.tobytes())
        self.ubo.bind_to_uniform_block(0)
        prog = self.prog
        prog["n_prims"].value = len(records)
        prog["Kinv"].write(_mat(np.linalg.inv(K)))
        prog["height"].value = float(height)
        light = scene.light
        prog["light_cam"].value = tuple(T_w_c[:3, :3].T @ light.direction)
        prog["shadows"].value = bool(scene.shadows)
        prog["light_color"].value = tuple(light.color)
        prog["ambient"].value = float(light.ambient)
        prog["diffuse"].value = float(light.diffuse)
        self.vao.render(moderngl.TRIANGLES, vertices=3)
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
