"""``python -m fastshap.demo``: value the modalities of a small trained model with every backend here.

Three synthetic modalities carry the class signal with different strength (strong, weak, none). A
concat-linear head is trained on them for a few seconds; then each available backend values every
sample. The demo prints the mean Shapley value per modality under the paper's benefit (the strong
modality should lead and the noise modality come last, but the noise modality's mean stays clearly
positive, about +0.5 at the defaults, not near zero: with v(S) = |S| * 1[correct], adding any modality to
a correct coalition raises v by one, so a modality the head ignores is not a null player; see the
README), the share of each modality's discrete values below 1, whether the backends agree, and the time
of each backend against one plain forward of the head.
"""

from __future__ import annotations

import argparse
import time

import torch

import fastshap
from fastshap import backends


def make_data(batch: int, num_classes: int, dims, strengths, seed: int):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (batch,), generator=g)
    feats = []
    for d, s in zip(dims, strengths):
        prototypes = torch.randn(num_classes, d, generator=g)
        feats.append(s * prototypes[labels] + torch.randn(batch, d, generator=g))
    return feats, labels


def train_head(feats, labels, num_classes, steps=150):
    head = fastshap.heads.ConcatLinear([f.shape[1] for f in feats], num_classes)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(head(feats), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return head


def median_ms(fn, repeats=7) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * sorted(times)[len(times) // 2]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    names, strengths = ["strong", "weak", "noise"], [0.1, 0.05, 0.0]
    dims = [args.dim, args.dim // 2, args.dim // 4]
    feats, labels = make_data(args.batch, args.classes, dims, strengths, args.seed)
    head = train_head(feats, labels, args.classes)
    with torch.no_grad():
        acc = (head(feats).argmax(1) == labels).float().mean().item()
    print(
        f"{len(names)} modalities {dict(zip(names, dims))}, {args.classes} classes, B = {args.batch}; "
        f"head accuracy {acc:.3f}\n"
    )

    cpu = backends.Call("concat", torch.device("cpu"), torch.float32, len(names))
    usable = [name for name in ("cpp", "torch") if backends.why_not(name, cpu) is None]
    results = {}
    for name in usable:
        results[name] = fastshap.modality_shapley(feats, head, labels, backend=name)
    phi = results[usable[0]]
    print("mean phi per modality (paper benefit, values in [-(n-1)/2, (n+1)/2]):")
    for i, name in enumerate(names):
        print(f"  {name:<7} {phi[:, i].mean().item():+.3f}   share with phi < 1: {(phi[:, i] < 1).float().mean():.2f}")
    print("backends agree exactly:", all(torch.equal(phi, other) for other in results.values()))

    with torch.no_grad():
        fwd = median_ms(lambda: head(feats))
    print(f"\ntimes (median of 7, this machine, {torch.get_num_threads()} threads):")
    print(f"  plain head forward        {fwd:8.2f} ms   1.00x")
    for name in usable:
        t = median_ms(lambda: fastshap.modality_shapley(feats, head, labels, backend=name))
        print(f"  modality_shapley[{name:<5}]  {t:8.2f} ms   {t / fwd:.2f}x   (all {2 ** len(names)} coalitions)")
    for name in ("cuda", "triton"):
        reason = backends.why_not(name, cpu)
        if reason:
            print(f"  {name}: not run here ({reason})")


if __name__ == "__main__":
    main()
