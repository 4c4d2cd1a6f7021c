"""Train/validation/test splits grouped by patient and stratified by label, and leak checks.

The paper splits images at random 60/20/20. Many patients have several images, so that
leaks patients into the test set; here whole patients go to one split (split.unit =
"patient"), and the label mix of each split follows the whole set. Two checks back it up:
the patient overlap between splits (0 by construction, reported anyway), and
near-duplicate images across splits found by a 64-bit DCT perceptual hash (the same
radiograph published twice under two patient ids is the leak a grouping cannot see).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import cv2
import numpy as np

PARTS = ("train", "val", "test")


@dataclass(frozen=True)
class Split:
    train: np.ndarray  # indices into the sample list
    val: np.ndarray
    test: np.ndarray

    def parts(self) -> dict[str, np.ndarray]:
        return {"train": self.train, "val": self.val, "test": self.test}

    def part_of(self, n: int) -> np.ndarray:
        """Name of the part holding each of the n samples ('' when in none)."""
        names = np.full(n, "", dtype=object)
        for name, idx in self.parts().items():
            names[idx] = name
        return names


def make_split(
    labels: list[str] | np.ndarray,
    groups: list[str] | np.ndarray,
    fractions: tuple[float, float, float],
    seed: int,
) -> Split:
    """Greedy stratified group split: each group goes, whole, to the part furthest below its targets.

    A group's need for a part is the sum over its images of that part's shortfall for the
    image's label, relative to the label's size (so a rare label weighs more per image).
    Groups are placed rarest label first (a patient with a normal and three COVID images is
    placed with the normal ones), larger groups first within a label (large groups are hard
    to place late), in a seeded random order otherwise.
    """
    labels, groups = np.asarray(labels), np.asarray(groups)
    rng = np.random.default_rng(seed)
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    totals = Counter(labels.tolist())
    by_rarity = sorted(totals, key=lambda lab: (totals[lab], lab))
    rank = {lab: k for k, lab in enumerate(by_rarity)}

    def rarest(g: str) -> int:
        return min(rank[lab] for lab in labels[members[g]])

    names = sorted(members)
    order = [names[i] for i in rng.permutation(len(names))]
    order.sort(key=lambda g: (rarest(g), -len(members[g])))  # stable: random within ties
    placed: dict[int, list[int]] = {p: [] for p in range(3)}
    current = {(p, lab): 0 for p in range(3) for lab in totals}
    for g in order:
        mix = Counter(labels[members[g]].tolist())
        need = [
            sum(n * (fractions[p] * totals[lab] - current[(p, lab)]) / totals[lab] for lab, n in mix.items())
            for p in range(3)
        ]
        p = int(np.argmax(need))
        placed[p].extend(members[g])
        for lab, n in mix.items():
            current[(p, lab)] += n
    return Split(*(np.array(sorted(placed[p]), dtype=np.int64) for p in range(3)))


def patient_overlap(split: Split, groups: list[str] | np.ndarray) -> dict[str, int]:
    groups = np.asarray(groups)
    sets = {name: set(groups[idx].tolist()) for name, idx in split.parts().items()}
    return {f"{a}-{b}": len(sets[a] & sets[b]) for i, a in enumerate(PARTS) for b in PARTS[i + 1 :]}


def label_counts(split: Split, labels: list[str] | np.ndarray) -> dict[str, dict[str, int]]:
    labels = np.asarray(labels)
    return {name: dict(sorted(Counter(labels[idx].tolist()).items())) for name, idx in split.parts().items()}


def perceptual_hash(square: np.ndarray) -> np.uint64:
    """pHash: the signs of the 8x8 lowest DCT frequencies of a 32x32 thumbnail vs their median."""
    thumb = cv2.resize(np.asarray(square, dtype=np.float32), (32, 32), interpolation=cv2.INTER_AREA)
    low = cv2.dct(thumb)[:8, :8].ravel()
    bits = low > np.median(low[1:])  # the DC term would dominate the median
    return np.uint64(int("".join("1" if b else "0" for b in bits), 2))


def hash_all(squares: np.ndarray) -> np.ndarray:
    return np.array([perceptual_hash(sq) for sq in squares], dtype=np.uint64)


def _popcount(x: np.ndarray) -> np.ndarray:
    return np.unpackbits(x.view(np.uint8).reshape(*x.shape, 8), axis=-1).sum(axis=-1)


def near_duplicates(hashes: np.ndarray, max_bits: int, chunk: int = 512) -> list[tuple[int, int, int]]:
    """All pairs (i, j, distance) with i < j whose hashes differ in at most max_bits bits."""
    pairs = []
    n = len(hashes)
    for start in range(0, n, chunk):
        block = hashes[start : start + chunk]
        dist = _popcount(np.bitwise_xor(block[:, None], hashes[None, :]))
        for a, j in zip(*np.nonzero(dist <= max_bits), strict=True):
            i = start + int(a)
            if i < j:
                pairs.append((i, int(j), int(dist[a, j])))
    return pairs


def cross_split_duplicates(
    pairs: list[tuple[int, int, int]], split: Split, n: int
) -> list[tuple[int, int, int, str, str]]:
    """The near-duplicate pairs whose two images sit in different parts of the split."""
    where = split.part_of(n)
    return [(i, j, d, where[i], where[j]) for i, j, d in pairs if where[i] and where[j] and where[i] != where[j]]


def merge_groups(groups: np.ndarray, pairs: list[tuple[int, int, int]]) -> np.ndarray:
    """Join the groups of near-duplicate images (union-find), so a split cannot separate them.

    The same radiograph published under two patient ids is one patient as far as leakage
    goes; a false match only makes the split a little coarser.
    """
    groups = np.asarray(groups).astype(str)
    parent = {g: g for g in groups.tolist()}

    def root(g: str) -> str:
        while parent[g] != g:
            parent[g] = parent[parent[g]]
            g = parent[g]
        return g

    for i, j, _ in pairs:
        a, b = root(groups[i]), root(groups[j])
        if a != b:
            parent[max(a, b)] = min(a, b)
    return np.array([root(g) for g in groups.tolist()])


def balanced_subset(indices: np.ndarray, labels: np.ndarray, classes: tuple[str, ...], seed: int) -> np.ndarray:
    """As many images of each class as the rarest class has (the paper's 1:1:1 option for B)."""
    rng = np.random.default_rng(seed)
    per_class = [indices[labels[indices] == c] for c in classes]
    k = min(len(p) for p in per_class)
    chosen = [rng.choice(p, size=k, replace=False) for p in per_class]
    return np.sort(np.concatenate(chosen)).astype(np.int64)
