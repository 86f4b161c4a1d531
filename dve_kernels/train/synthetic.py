"""Procedurally drawn synthetic faces with exactly known landmarks (no download needed; README, "Reference training").

The five landmarks are CelebA's (left eye, right eye, nose tip, left and right mouth corner; "left" = smaller x),
exact: every shape is a polygon computed in the face's frame and mapped by the landmarks' similarity transform,
drawn supersampled and box-filtered down; pixel ``(x, y)``, pixel centres at integers. ``marks`` come from their
own random stream (the face is otherwise the same). Everything is a deterministic function of ``(seed, index)``.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["render_face", "render_faces"]

_SUPERSAMPLE = 4

_SKIN = np.array([[255, 224, 196], [241, 194, 150], [224, 172, 105], [198, 134, 66], [141, 85, 36],
                  [92, 56, 30], [255, 205, 178], [232, 190, 172]], dtype=np.float64)
_HAIR = np.array([[20, 15, 10], [60, 40, 25], [110, 75, 40], [200, 160, 90], [160, 60, 20], [130, 130, 130],
                  [230, 225, 210], [40, 30, 60]], dtype=np.float64)
_IRIS = np.array([[70, 45, 20], [40, 90, 160], [60, 120, 60], [100, 100, 100], [30, 20, 10]], dtype=np.float64)


def _colour(rng, palette, jitter=18.0):
    base = palette[rng.integers(len(palette))]
    return tuple(int(v) for v in np.clip(base + rng.normal(0, jitter, 3), 0, 255))


def _shade(colour, factor):
    return tuple(int(np.clip(c * factor, 0, 255)) for c in colour)


def _ellipse(cx, cy, rx, ry, n=48, start=0.0, stop=2 * math.pi):
    t = np.linspace(start, stop, n, endpoint=stop - start < 2 * math.pi - 1e-9)
    return np.stack((cx + rx * np.cos(t), cy + ry * np.sin(t)), 1)


def _background(rng, size):
    """A textured ``size x size`` RGB background."""
    kind = rng.integers(4)
    c1 = rng.uniform(0, 255, 3)
    c2 = rng.uniform(0, 255, 3)
    yy, xx = np.mgrid[0:size, 0:size] / size
    angle = rng.uniform(0, 2 * math.pi)
    ramp = (np.cos(angle) * xx + np.sin(angle) * yy)
    ramp = (ramp - ramp.min()) / max(ramp.max() - ramp.min(), 1e-6)
    img = c1 * (1 - ramp[..., None]) + c2 * ramp[..., None]
    if kind == 1:  # stripes
        freq = rng.uniform(3, 12)
        stripes = 0.5 + 0.5 * np.sin(2 * math.pi * freq * (np.cos(angle + 1) * xx + np.sin(angle + 1) * yy))
        img = img * (0.75 + 0.25 * stripes[..., None])
    elif kind == 2:  # low-frequency noise
        cells = int(rng.integers(3, 9))
        noise = rng.uniform(0, 255, (cells, cells, 3)).astype(np.uint8)
        noise = np.asarray(Image.fromarray(noise).resize((size, size), Image.BICUBIC), dtype=np.float64)
        img = 0.4 * img + 0.6 * noise
    image = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    if kind == 3 or rng.random() < 0.5:  # blobs and boxes
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(2, 8))):
            x0, y0 = rng.uniform(-0.2, 1.0, 2) * size
            w, h = rng.uniform(0.1, 0.5, 2) * size
            fill = tuple(int(v) for v in rng.uniform(0, 255, 3))
            if rng.random() < 0.5:
                draw.ellipse([x0, y0, x0 + w, y0 + h], fill=fill)
            else:
                draw.rectangle([x0, y0, x0 + w, y0 + h], fill=fill)
    return image


def render_face(seed: int, index: int, size: int = 100, marks: int = 0):
    """One synthetic face: ``(image uint8 (size, size, 3), landmarks float32 (5, 2) pixel (x, y))``."""
    rng = np.random.default_rng([int(seed), int(index)])
    ss = _SUPERSAMPLE
    big = size * ss
    image = _background(rng, big)
    draw = ImageDraw.Draw(image)

    # Pose: the face frame has x right, y down, face half-width 1; it maps to output pixels by a similarity.
    scale = size * rng.uniform(0.27, 0.33)
    angle = math.radians(rng.uniform(-12, 12))
    centre = np.array([size / 2 + rng.uniform(-0.05, 0.05) * size, size / 2 + rng.uniform(-0.03, 0.06) * size])
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])

    def to_out(points):  # face frame -> output pixel coordinates
        return (np.asarray(points, dtype=np.float64) @ rot.T) * scale + centre

    def to_big(points):  # face frame -> supersampled drawing coordinates
        return (to_out(points) + 0.5) * ss - 0.5

    def poly(points, fill=None, outline=None, width=1):
        pts = [tuple(p) for p in to_big(points)]
        draw.polygon(pts, fill=fill, outline=outline, width=max(1, int(width * ss)) if outline else 1)

    def line(points, fill, width):
        pts = [tuple(p) for p in to_big(points)]
        draw.line(pts, fill=fill, width=max(1, int(round(width * scale * ss))), joint="curve")

    skin = _colour(rng, _SKIN)
    hair = _colour(rng, _HAIR)
    iris = _colour(rng, _IRIS, 12.0)
    lips = tuple(int(v) for v in np.clip(np.array(skin) * [0.85, 0.55, 0.55] + rng.normal(0, 10, 3), 0, 255))

    height = rng.uniform(1.2, 1.45)   # face half-height / half-width
    taper = rng.uniform(0.0, 0.35)    # jaw narrowing
    hair_style = rng.integers(4)      # 0 bald, 1 short, 2 long, 3 fringe

    # Long hair behind the head.
    if hair_style == 2:
        back = _ellipse(0, 0.15, 1.3, height * 1.15, 64)
        back[:, 1] = np.minimum(back[:, 1], height * rng.uniform(0.6, 1.1))
        poly(back, fill=hair)
    # Ears.
    ear_y = rng.uniform(-0.05, 0.15)
    for side in (-1, 1):
        poly(_ellipse(side * 0.98, ear_y, 0.16, 0.28, 24), fill=_shade(skin, 0.92))
    # Face outline with a tapering jaw.
    t = np.linspace(0, 2 * math.pi, 96, endpoint=False)
    fx = np.cos(t) * (1 - taper * np.clip(np.sin(t), 0, None) ** 2)
    fy = height * np.sin(t)
    poly(np.stack((fx, fy), 1), fill=skin)
    # Cheek blush / skin texture.
    if rng.random() < 0.5:
        for side in (-1, 1):
            poly(_ellipse(side * 0.55, 0.35, 0.2, 0.12, 24), fill=_shade(skin, rng.uniform(0.88, 0.97)))
    if rng.random() < 0.3:
        for _ in range(int(rng.integers(8, 25))):
            p = rng.uniform([-0.7, -0.3], [0.7, 0.6])
            poly(_ellipse(p[0], p[1], 0.025, 0.025, 8), fill=_shade(skin, 0.75))
    # Hair on top.
    if hair_style in (1, 2, 3):
        top = _ellipse(0, -0.1, 1.06, height * 1.02, 64, math.pi, 2 * math.pi)
        hairline = rng.uniform(-0.75, -0.5) * height
        if hair_style == 3:
            hairline = rng.uniform(-0.45, -0.3) * height
        inner = np.stack((np.linspace(1.0, -1.0, 24), hairline + 0.12 * np.cos(np.linspace(-1.5, 1.5, 24))), 1)
        poly(np.concatenate((top, inner)), fill=hair)
    # Identity-specific marks on skin and hair (their own random stream).
    marks_rng = np.random.default_rng([int(seed), int(index), 1])
    for _ in range(marks):
        p = marks_rng.uniform(-0.95, 0.95, 2) * [1.0, height]
        r = marks_rng.uniform(0.06, 0.15)
        fill = tuple(int(v) for v in marks_rng.uniform(0, 255, 3))
        poly(_ellipse(p[0], p[1], r, r * marks_rng.uniform(0.5, 1.0), 10), fill=fill)

    # Landmarks in the face frame.
    eye_dx = rng.uniform(0.32, 0.46)
    eye_y = rng.uniform(-0.2, 0.02) * height
    nose_y = eye_y + rng.uniform(0.38, 0.6) * height
    mouth_y = nose_y + rng.uniform(0.22, 0.36) * height
    mouth_dx = rng.uniform(0.22, 0.38)
    smile = rng.uniform(-0.06, 0.08)
    landmarks = np.array([[-eye_dx, eye_y], [eye_dx, eye_y], [0.0, nose_y],
                          [-mouth_dx, mouth_y - smile], [mouth_dx, mouth_y - smile]])

    # Eyebrows.
    brow_dy = rng.uniform(0.14, 0.24)
    brow_w = rng.uniform(0.08, 0.14)
    brow_colour = _shade(hair, 0.8)
    for side in (-1, 1):
        xs = side * (eye_dx + np.linspace(-0.17, 0.19, 8))
        ys = eye_y - brow_dy - 0.04 * np.sin(np.linspace(0, math.pi, 8))
        line(np.stack((xs, ys), 1), brow_colour, brow_w / 2)
    # Eyes: white, iris, pupil, centred on the landmark.
    eye_rx = rng.uniform(0.13, 0.19)
    eye_ry = eye_rx * rng.uniform(0.45, 0.65)
    iris_r = eye_ry * rng.uniform(0.8, 0.95)
    for k in (0, 1):
        cx, cy = landmarks[k]
        poly(_ellipse(cx, cy, eye_rx, eye_ry, 32), fill=(245, 245, 240), outline=_shade(skin, 0.5), width=0.4)
        poly(_ellipse(cx, cy, iris_r, iris_r, 24), fill=iris)
        poly(_ellipse(cx, cy, iris_r * 0.45, iris_r * 0.45, 16), fill=(5, 5, 5))
    # Glasses.
    if rng.random() < 0.2:
        frame = tuple(int(v) for v in rng.uniform(0, 120, 3))
        for k in (0, 1):
            cx, cy = landmarks[k]
            ring = _ellipse(cx, cy, eye_rx * 1.5, eye_rx * 1.2, 32)
            line(np.concatenate((ring, ring[:1])), frame, 0.035)
        line([[landmarks[0, 0] + eye_rx * 1.5, eye_y], [landmarks[1, 0] - eye_rx * 1.5, eye_y]], frame, 0.035)
    # Nose: a ridge from between the eyes to the tip, nostrils either side of the tip.
    nose_w = rng.uniform(0.1, 0.18)
    nose_shadow = _shade(skin, rng.uniform(0.72, 0.85))
    ridge = [[-0.04, eye_y + 0.1], [0.04, eye_y + 0.1], [nose_w, nose_y - 0.02], [0.0, nose_y + 0.05],
             [-nose_w, nose_y - 0.02]]
    poly(ridge, fill=_shade(skin, rng.uniform(0.9, 0.97)))
    for side in (-1, 1):
        poly(_ellipse(side * nose_w * 0.6, nose_y + 0.01, nose_w * 0.35, 0.035, 16), fill=nose_shadow)
    poly(_ellipse(0, nose_y, 0.035, 0.035, 12), fill=_shade(skin, 1.08))
    # Beard.
    if rng.random() < 0.2:
        t = np.linspace(0, math.pi, 32)
        chin = np.stack((np.cos(t) * (1 - taper * np.sin(t) ** 2), height * np.sin(t)), 1)
        # chin runs from x = 1 to x = -1 along the jaw; close the outline back along the upper lip line.
        upper = np.stack((np.linspace(-0.95, 0.95, 16), np.full(16, mouth_y - 0.12)), 1)
        poly(np.concatenate((chin, upper)), fill=_shade(hair, 0.9))
    # Mouth: upper and lower lip curves between the two corners.
    lip_up = rng.uniform(0.04, 0.09)
    lip_down = rng.uniform(0.06, 0.13)
    xs = np.linspace(-mouth_dx, mouth_dx, 24)
    u = xs / mouth_dx
    base = mouth_y - smile * u ** 2  # corners lifted by `smile`
    upper_lip = np.stack((xs, base - lip_up * (1 - u ** 2) * (1 + 0.3 * np.cos(u * math.pi * 2))), 1)
    lower_lip = np.stack((xs[::-1], (base + lip_down * (1 - u ** 2))[::-1]), 1)
    poly(np.concatenate((upper_lip, lower_lip)), fill=lips)
    line(np.stack((xs, base), 1), _shade(lips, 0.55), 0.02)

    image = image.resize((size, size), Image.BOX)
    return np.asarray(image, dtype=np.uint8).copy(), to_out(landmarks).astype(np.float32)


def render_faces(seed: int, count: int, size: int = 100, start: int = 0, marks: int = 0):
    """``count`` faces: ``images uint8 (count, size, size, 3)``, ``landmarks float32 (count, 5, 2)``."""
    images = np.empty((count, size, size, 3), dtype=np.uint8)
    landmarks = np.empty((count, 5, 2), dtype=np.float32)
    for i in range(count):
        images[i], landmarks[i] = render_face(seed, start + i, size, marks)
    return images, landmarks
