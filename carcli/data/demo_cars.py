"""The demo set's invented cars: the class hierarchy and how each class is drawn.

Five fictional makes, each with two or three models, each model in one or two body types and
one or two years: 20 fine classes named like Stanford Cars ("Vexa Arrow Sedan 2009"), so the
taxonomy gives every head (model, make, type, year) something to learn. What each part of the
name looks like:

- make: the body colour family and the nose shape (pointed, round, square, wedge) with its grille;
- body type: the silhouette (sedan 3-box, SUV tall box, hatchback cut rear, wagon long roof,
  coupe low sloped roof, convertible no roof) and a fitting extra (SUV cladding, wagon wood panels
  and roof rails, coupe wing, hatchback spoiler, convertible seats);
- model: a detail (side stripe, number of side windows, head-lamp shape);
- year: the wheels (their size grows with the year, the rim style changes every few years).

Cars are drawn taller than real ones (cartoon proportions) so that roof lines survive 64 px.
`draw_car` draws one car facing right on a transparent canvas; `carcli.data.demo` puts it in a scene.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

Point = tuple[float, float]


# ---------------------------------------------------------------- the hierarchy


@dataclass(frozen=True)
class _Make:
    hue: float  # degrees
    nose: str  # "pointed" | "round" | "square" | "wedge"
    grille: str  # "vbars" | "hbars" | "mesh" | "dot" | "none"


@dataclass(frozen=True)
class _Model:
    make: str
    name: str
    stripe: str  # "none" | "line" | "double" | "band"
    windows: int  # side windows: 2 or 3
    lamp: str  # "round" | "rect" | "slim"
    variants: tuple[tuple[str, int], ...]  # (body type, year)


MAKES: dict[str, _Make] = {
    "Vexa": _Make(hue=0.0, nose="pointed", grille="vbars"),
    "Orlin": _Make(hue=215.0, nose="round", grille="hbars"),
    "Tamaro": _Make(hue=125.0, nose="square", grille="mesh"),
    "Zephyx": _Make(hue=50.0, nose="wedge", grille="dot"),
    "Brannock": _Make(hue=285.0, nose="round", grille="none"),
}

MODELS: tuple[_Model, ...] = (
    _Model("Vexa", "Arrow", "line", 2, "rect", (("Sedan", 2009), ("Sedan", 2015), ("Coupe", 2015))),
    _Model("Vexa", "Dune", "band", 3, "round", (("SUV", 2012), ("SUV", 2018))),
    _Model("Orlin", "Lumen", "none", 2, "round", (("Hatchback", 2004), ("Hatchback", 2011))),
    _Model("Orlin", "Tern", "double", 3, "slim", (("Wagon", 2011),)),
    _Model("Orlin", "Crest", "line", 2, "slim", (("Sedan", 2018), ("Convertible", 2018))),
    _Model("Tamaro", "Pike", "none", 3, "rect", (("SUV", 2006),)),
    _Model("Tamaro", "Rivo", "double", 2, "round", (("Hatchback", 2014), ("Wagon", 2014))),
    _Model("Tamaro", "Sol", "band", 2, "slim", (("Convertible", 2002),)),
    _Model("Zephyx", "Nova", "double", 2, "slim", (("Coupe", 2010), ("Coupe", 2019))),
    _Model("Zephyx", "Gale", "none", 3, "round", (("Sedan", 2003),)),
    _Model("Brannock", "Ridge", "line", 3, "rect", (("SUV", 2008), ("Wagon", 2008))),
    _Model("Brannock", "Falk", "band", 2, "round", (("Coupe", 2016),)),
)


@dataclass(frozen=True)
class CarClass:
    name: str
    make: _Make
    model: _Model
    body_type: str
    year: int


def car_classes() -> list[CarClass]:
    found = [
        CarClass(f"{m.make} {m.name} {body} {year}", MAKES[m.make], m, body, year)
        for m in MODELS
        for body, year in m.variants
    ]
    return sorted(found, key=lambda c: c.name)


# ---------------------------------------------------------------- body shapes (car units: 200 long, ground at y=96)


@dataclass(frozen=True)
class _Shape:
    rear: float
    front: float
    top: float  # beltline
    bottom: float
    cabin: tuple[Point, ...]  # rear base, rear roof, front roof, front base
    wheels: tuple[float, float]
    radius: float


_FLAT_SHAPES: dict[str, _Shape] = {  # natural proportions, ground at y=96
    "Sedan": _Shape(4, 196, 56, 84, ((58, 56), (72, 24), (122, 24), (144, 56)), (38, 160), 12),
    "SUV": _Shape(10, 190, 42, 80, ((12, 42), (16, 10), (130, 10), (152, 42)), (42, 156), 14),
    "Hatchback": _Shape(36, 176, 54, 84, ((37, 54), (40, 24), (108, 24), (136, 54)), (60, 150), 12),
    "Wagon": _Shape(4, 196, 56, 84, ((5, 56), (7, 28), (122, 28), (146, 56)), (38, 160), 12),
    "Coupe": _Shape(8, 194, 66, 86, ((14, 66), (88, 46), (104, 46), (142, 66)), (42, 162), 12),
    "Convertible": _Shape(10, 192, 61, 85, (), (42, 160), 12),
}
TALL = 1.3  # cartoon proportions: bodies drawn taller than real, so the roof lines show at small sizes
GROUND = 126.0
CANVAS = (204, 130)


def _stretch(shape: _Shape) -> _Shape:
    def y(v: float) -> float:
        return GROUND - (96.0 - v) * TALL

    return _Shape(
        rear=shape.rear,
        front=shape.front,
        top=y(shape.top),
        bottom=y(shape.bottom),
        cabin=tuple((x, y(v)) for x, v in shape.cabin),
        wheels=shape.wheels,
        radius=shape.radius * 1.1,
    )


SHAPES: dict[str, _Shape] = {name: _stretch(shape) for name, shape in _FLAT_SHAPES.items()}


def rgb(hue: float, sat: float, val: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb((hue % 360.0) / 360.0, min(max(sat, 0.0), 1.0), min(max(val, 0.0), 1.0))
    return round(r * 255), round(g * 255), round(b * 255)


def _shade(color: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    return tuple(min(255, max(0, round(c * factor))) for c in color)  # type: ignore[return-value]


def _body_outline(shape: _Shape, nose: str) -> list[Point]:
    """The lower body, rear to front, with the make's nose."""
    r, f, t, b = shape.rear, shape.front, shape.top, shape.bottom
    mid = (t + b) / 2
    rear = [(r, b), (r, t + 2), (r + 3, t)]
    if nose == "pointed":
        front = [(f - 24, t), (f, mid + 2), (f - 1, b)]
    elif nose == "round":
        steps = [math.radians(a) for a in range(-90, 91, 15)]
        half = (b - t) / 2
        front = [(f - half + half * math.cos(a), mid + half * math.sin(a)) for a in steps]
    elif nose == "square":
        front = [(f - 2, t), (f, t + 2), (f, b)]
    else:  # wedge: low sharp front, the bonnet slopes down
        front = [(f - 40, t), (f, t + 10), (f, b)]
    return rear + front


def _draw_grille(draw: ImageDraw.ImageDraw, shape: _Shape, make: _Make, k: float, dark: tuple) -> None:
    f, t, b = shape.front, shape.top, shape.bottom
    x0, x1 = f - 9, f - 1
    y0, y1 = t + 12, b - 8
    if make.nose == "round":
        x0, x1 = f - 13, f - 5
    if make.grille == "none" or y1 <= y0:
        return
    if make.grille == "dot":
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        draw.ellipse([(cx - 4) * k, (cy - 4) * k, (cx + 4) * k, (cy + 4) * k], fill=dark)
        return
    draw.rectangle([x0 * k, y0 * k, x1 * k, y1 * k], fill=(30, 30, 30))
    width = max(1, round(1.2 * k))
    if make.grille in ("vbars", "mesh"):
        for x in np.linspace(x0 + 2, x1 - 2, 3):
            draw.line([x * k, y0 * k, x * k, y1 * k], fill=(200, 200, 200), width=width)
    if make.grille in ("hbars", "mesh"):
        for y in np.linspace(y0 + 2, y1 - 2, 3):
            draw.line([x0 * k, y * k, x1 * k, y * k], fill=(200, 200, 200), width=width)


def _window_polygon(cabin: tuple[Point, ...]) -> list[Point]:
    (a, ya), (bx, yb), (c, yc), (d, yd) = cabin
    return [(a + 6, ya - 2), (bx + 4, yb + 4), (c - 3, yc + 4), (d - 8, yd - 2)]


def _draw_wheel(draw: ImageDraw.ImageDraw, cx: float, r: float, year: int, k: float) -> None:
    cy = GROUND - r
    draw.ellipse([(cx - r) * k, (cy - r) * k, (cx + r) * k, (cy + r) * k], fill=(18, 18, 18))
    rim = r * 0.62
    if year < 2006:  # full hubcap
        draw.ellipse([(cx - rim) * k, (cy - rim) * k, (cx + rim) * k, (cy + rim) * k], fill=(205, 205, 210))
        hub = rim * 0.3
        draw.ellipse([(cx - hub) * k, (cy - hub) * k, (cx + hub) * k, (cy + hub) * k], fill=(60, 60, 60))
        return
    dark = year >= 2017
    face = (55, 55, 60) if dark else (150, 150, 155)
    spoke_color = (120, 120, 125) if dark else (225, 225, 230)
    spokes, width = (5, 2.2) if year < 2012 else ((8, 1.2) if year < 2017 else (10, 1.0))
    draw.ellipse([(cx - rim) * k, (cy - rim) * k, (cx + rim) * k, (cy + rim) * k], fill=face)
    for i in range(spokes):
        a = 2 * math.pi * i / spokes
        draw.line(
            [cx * k, cy * k, (cx + rim * math.cos(a)) * k, (cy + rim * math.sin(a)) * k],
            fill=spoke_color,
            width=max(1, round(width * k)),
        )
    hub = rim * 0.22
    draw.ellipse([(cx - hub) * k, (cy - hub) * k, (cx + hub) * k, (cy + hub) * k], fill=spoke_color)


@dataclass(frozen=True)
class _Paint:
    """The colours of one car: its body (with a darker shade and an outline shade) and its glass."""

    body: tuple[int, int, int]
    dark: tuple[int, int, int]
    outline: tuple[int, int, int]
    glass: tuple[int, int, int]


def _paint(car: CarClass, rng: np.random.Generator) -> _Paint:
    body = rgb(car.make.hue + rng.uniform(-8, 8), rng.uniform(0.65, 0.95), rng.uniform(0.6, 0.95))
    dark = _shade(body, 0.55)
    outline = _shade(body, 0.3)
    glass = rgb(rng.uniform(190, 230), rng.uniform(0.15, 0.4), rng.uniform(0.2, 0.45))
    return _Paint(body, dark, outline, glass)


def _poly(
    draw: ImageDraw.ImageDraw,
    k: float,
    points: list[Point] | tuple[Point, ...],
    fill: tuple,
    outline: tuple | None = None,
) -> None:
    draw.polygon([(x * k, y * k) for x, y in points], fill=fill, outline=outline, width=max(1, round(k)))


def _draw_cabin(draw: ImageDraw.ImageDraw, shape: _Shape, car: CarClass, paint: _Paint, k: float) -> None:
    """The roof with its side windows (a coupe: one long one)."""
    _poly(draw, k, shape.cabin, paint.body, paint.outline)
    window = _window_polygon(shape.cabin)
    _poly(draw, k, window, paint.glass)
    x_lo, x_hi = window[0][0], window[3][0]
    panes = 1 if car.body_type == "Coupe" else car.model.windows  # a coupe: one long side window
    for j in range(1, panes):
        x = x_lo + (x_hi - x_lo) * j / panes
        draw.rectangle([(x - 2) * k, (shape.cabin[1][1]) * k, (x + 2) * k, (shape.top) * k], fill=paint.body)


def _draw_open_top(draw: ImageDraw.ImageDraw, shape: _Shape, k: float) -> None:
    """A convertible: windshield frame, seats and two headrests."""
    _poly(draw, k, [(126, shape.top), (114, shape.top - 24), (118, shape.top - 24), (131, shape.top)], (40, 40, 45))
    _poly(draw, k, [(40, shape.top), (44, shape.top - 6), (112, shape.top - 6), (116, shape.top)], (150, 110, 70))
    for x in (70, 94):
        draw.rounded_rectangle([(x - 4) * k, (shape.top - 14) * k, (x + 4) * k, (shape.top + 1) * k],
                               radius=2 * k, fill=(35, 35, 35))  # fmt: skip


def _draw_roof_rails(draw: ImageDraw.ImageDraw, shape: _Shape, k: float) -> None:
    roof = shape.cabin[1][1]
    draw.rectangle([(shape.cabin[1][0] + 4) * k, (roof - 3) * k, (shape.cabin[2][0] - 6) * k, (roof - 1) * k],
                   fill=(35, 35, 35))  # fmt: skip


def _draw_body_extra(draw: ImageDraw.ImageDraw, shape: _Shape, body_type: str, k: float) -> None:
    """The body type's extra on the lower body: wagon wood, hatchback spoiler, coupe wing, SUV cladding."""
    if body_type == "Wagon":  # wood panelling
        draw.rectangle([(shape.rear + 3) * k, (shape.top + 4) * k, (shape.front - 40) * k, (shape.bottom - 5) * k],
                       fill=(120, 78, 40))  # fmt: skip
    if body_type == "Hatchback":  # roof spoiler
        x, y = shape.cabin[1]
        _poly(draw, k, [(x - 6, y + 1), (x + 14, y - 2), (x + 14, y + 2), (x - 4, y + 5)], (25, 25, 25))
    if body_type == "Coupe":  # rear wing
        _poly(draw, k, [(shape.rear, shape.top - 9), (shape.rear + 22, shape.top - 9), (shape.rear + 22, shape.top - 6),
                        (shape.rear + 12, shape.top), (shape.rear + 7, shape.top), (shape.rear + 3, shape.top - 6)],
              (25, 25, 25))  # fmt: skip
    if body_type == "SUV":  # black cladding along the sills
        draw.rectangle([shape.rear * k, (shape.bottom - 7) * k, (shape.front - 6) * k, shape.bottom * k],
                       fill=(30, 30, 30))  # fmt: skip


def _draw_stripe(draw: ImageDraw.ImageDraw, shape: _Shape, stripe: str, paint: _Paint, k: float) -> None:
    """The model's side stripe: none, a line, a double line or a dark band."""
    length = [(shape.rear + 4) * k, (shape.front - 14) * k]
    y_belt = shape.top
    stripe_color = (245, 245, 245) if sum(paint.body) < 450 else (25, 25, 25)
    if stripe == "line":
        y = y_belt + 7
        draw.rectangle([length[0], (y - 1.2) * k, length[1], (y + 1.2) * k], fill=stripe_color)
    elif stripe == "double":
        for y in (y_belt + 5, y_belt + 10):
            draw.rectangle([length[0], (y - 0.9) * k, length[1], (y + 0.9) * k], fill=stripe_color)
    elif stripe == "band":
        draw.rectangle([length[0], (shape.bottom - 10) * k, length[1], (shape.bottom - 4) * k], fill=paint.dark)


def _draw_lamps(draw: ImageDraw.ImageDraw, shape: _Shape, car: CarClass, k: float) -> None:
    """The model's head lamp (round, rect or slim, placed by the make's nose) and the tail lamp."""
    lamp_x = shape.front - (14 if car.make.nose == "round" else 8)
    lamp_y = shape.top + (12 if car.make.nose == "wedge" else 5)
    lamp = (255, 250, 205)
    if car.model.lamp == "round":
        draw.ellipse([(lamp_x - 4) * k, (lamp_y - 3) * k, (lamp_x + 4) * k, (lamp_y + 5) * k], fill=lamp)
    elif car.model.lamp == "rect":
        draw.rectangle([(lamp_x - 6) * k, (lamp_y - 2) * k, (lamp_x + 3) * k, (lamp_y + 5) * k], fill=lamp)
    else:
        draw.rectangle([(lamp_x - 11) * k, (lamp_y - 1) * k, (lamp_x + 4) * k, (lamp_y + 1.5) * k], fill=lamp)
    draw.rectangle([(shape.rear - 1) * k, (shape.top + 3) * k, (shape.rear + 3) * k, (shape.top + 9) * k],
                   fill=(200, 20, 20))  # fmt: skip


def _draw_wheels(draw: ImageDraw.ImageDraw, shape: _Shape, year: int, k: float) -> None:
    """The year's wheels (size and rim style) in dark wheel arches."""
    radius = shape.radius * (0.85 + 0.025 * (year - 2000))
    for cx in shape.wheels:
        draw.ellipse([(cx - radius - 3) * k, (GROUND - 2 * radius - 3) * k, (cx + radius + 3) * k,
                      (GROUND - radius + 2) * k], fill=(15, 15, 15))  # fmt: skip
        _draw_wheel(draw, cx, radius, year, k)


def draw_car(car: CarClass, rng: np.random.Generator, k: float) -> Image.Image:
    """The car facing right on a transparent canvas; k pixels per car unit."""
    shape = SHAPES[car.body_type]
    canvas = Image.new("RGBA", (math.ceil(CANVAS[0] * k), math.ceil(CANVAS[1] * k)), (0, 0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    paint = _paint(car, rng)
    # shadow on the ground
    draw.ellipse([(shape.rear + 4) * k, (GROUND - 4) * k, (shape.front - 4) * k, (GROUND + 3) * k],
                 fill=(0, 0, 0, 90))  # fmt: skip
    if shape.cabin:
        _draw_cabin(draw, shape, car, paint, k)
    else:
        _draw_open_top(draw, shape, k)
    if car.body_type in ("SUV", "Wagon"):
        _draw_roof_rails(draw, shape, k)
    _poly(draw, k, _body_outline(shape, car.make.nose), paint.body, paint.outline)  # lower body
    _draw_body_extra(draw, shape, car.body_type, k)
    draw.line([shape.rear * k, (shape.bottom - 1) * k, shape.front * k, (shape.bottom - 1) * k],
              fill=paint.dark, width=max(1, round(2 * k)))  # fmt: skip
    _draw_stripe(draw, shape, car.model.stripe, paint, k)
    _draw_grille(draw, shape, car.make, k, paint.dark)
    _draw_lamps(draw, shape, car, k)
    _draw_wheels(draw, shape, car.year, k)
    return canvas
