"""Habit clusters: k-means on normalised daily load shapes, k chosen by the best mean silhouette.

A profile is a household's use per local hour of day divided by its total (the shape, not the size).
k-means++ seeding from a seeded generator makes a run reproducible. For scale, centroids are fitted on a
seeded sample (`fit_sample`) and every profile is then assigned to its nearest centroid; the silhouette
that chooses k is computed on a smaller sample (it is quadratic).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

Vector = tuple[float, ...]


def normalise(by_hour: Sequence[float]) -> Vector | None:
    total = sum(by_hour)
    if total <= 0:
        return None
    return tuple(value / total for value in by_hour)


def _distance2(a: Vector, b: Vector) -> float:
    return sum((x - y) * (x - y) for x, y in zip(a, b, strict=True))


def nearest(point: Vector, centroids: Sequence[Vector]) -> int:
    best, best_distance = 0, float("inf")
    for index, centroid in enumerate(centroids):
        distance = _distance2(point, centroid)
        if distance < best_distance:
            best, best_distance = index, distance
    return best


def _seed(points: Sequence[Vector], k: int, rng: random.Random) -> list[Vector]:
    centroids = [points[rng.randrange(len(points))]]
    distances = [_distance2(p, centroids[0]) for p in points]
    while len(centroids) < k:
        total = sum(distances)
        if total <= 0:
            centroids.append(points[rng.randrange(len(points))])
            continue
        target, acc = rng.random() * total, 0.0
        chosen = len(points) - 1
        for index, distance in enumerate(distances):
            acc += distance
            if acc >= target:
                chosen = index
                break
        centroids.append(points[chosen])
        distances = [min(d, _distance2(p, centroids[-1])) for p, d in zip(points, distances, strict=True)]
    return centroids


def kmeans(points: Sequence[Vector], k: int, *, seed: int = 0, iterations: int = 30) -> list[Vector]:
    """Centroids of `k` clusters (Lloyd's iterations from k-means++ seeds)."""
    if not 1 <= k <= len(points):
        raise ValueError("k must be between 1 and the number of points")
    rng = random.Random(seed)
    centroids = _seed(points, k, rng)
    dims = len(points[0])
    for _ in range(iterations):
        sums = [[0.0] * dims for _ in range(k)]
        counts = [0] * k
        for point in points:
            index = nearest(point, centroids)
            counts[index] += 1
            row = sums[index]
            for d in range(dims):
                row[d] += point[d]
        moved = [tuple(value / counts[i] for value in sums[i]) if counts[i] else centroids[i] for i in range(k)]
        if moved == centroids:
            break
        centroids = moved
    return centroids


def silhouette(points: Sequence[Vector], labels: Sequence[int]) -> float:
    """Mean silhouette (−1..1): how much closer each point is to its own cluster than to the next one."""
    clusters = set(labels)
    if len(clusters) < 2:
        return 0.0
    scores = []
    for i, point in enumerate(points):
        by_cluster: dict[int, list[float]] = {}
        for j, other in enumerate(points):
            if i != j:
                by_cluster.setdefault(labels[j], []).append(_distance2(point, other) ** 0.5)
        own = by_cluster.get(labels[i])
        if not own:
            scores.append(0.0)
            continue
        a = sum(own) / len(own)
        b = min(sum(d) / len(d) for c, d in by_cluster.items() if c != labels[i])
        scores.append((b - a) / max(a, b) if max(a, b) > 0 else 0.0)
    return sum(scores) / len(scores)


@dataclass(frozen=True, slots=True)
class Clustering:
    k: int
    centroids: tuple[Vector, ...]
    labels: tuple[int, ...]
    silhouette: float


def choose_k(
    points: Sequence[Vector],
    *,
    k_range: range = range(2, 9),
    seed: int = 0,
    fit_sample: int = 5000,
    score_sample: int = 600,
) -> Clustering:
    """Cluster `points` for each k in `k_range` and keep the k with the highest mean silhouette."""
    if len(points) < 2:
        raise ValueError("clustering needs at least two profiles")
    rng = random.Random(seed)
    fit = list(points) if len(points) <= fit_sample else rng.sample(list(points), fit_sample)
    scored = fit if len(fit) <= score_sample else rng.sample(fit, score_sample)
    best: tuple[float, int, list[Vector]] | None = None
    for k in k_range:
        if k > len(set(fit)):
            break
        centroids = kmeans(fit, k, seed=seed)
        score = silhouette(scored, [nearest(p, centroids) for p in scored])
        if best is None or score > best[0]:
            best = (score, k, centroids)
    if best is None:
        centroids = kmeans(fit, 1, seed=seed)
        best = (0.0, 1, centroids)
    score, k, centroids = best
    labels = tuple(nearest(p, centroids) for p in points)
    return Clustering(k, tuple(centroids), labels, score)
