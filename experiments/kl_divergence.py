"""Experiment 3: the contextual loss tracks the KL divergence (Mechrez et al., ACCV 2018).

Target set Y ~ N(0, I) (the "data"), prediction set X ~ N(mu e1, sigma^2 I) (the "model"), both of
n points in d dimensions, over a grid of mu and sigma for d in {1, 2, 5}; l2 distance (squared
Euclidean, as in the paper). For each d: Spearman's rank correlation between the CX loss (mean over
seeds) and the analytic KL(target ‖ prediction), and whether each 1-D sweep (mu at sigma = 1,
sigma at mu = 0) has its minimum at the true parameter. Expectation: rho >= 0.9.

Why KL(target ‖ prediction): CX averages, over the target's points, how well each is matched by
some prediction point; target points in regions the prediction does not cover lose their match.
That is the mode-covering divergence from the target, the one a generative model that must cover
the data is trained with. The reverse KL is reported too.

    python experiments/kl_divergence.py [--quick] [--out DIR]
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import _common
import torch

from contextual_loss.demo.statistics import gaussian_kl, spearman
from contextual_loss.functional import contextual_loss

DIMS = (1, 2, 5)
RHO_LIMIT = 0.9
FULL = {
    "mus": (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0),
    "sigmas": (0.5, 0.6, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0),
    "n": 600,
    "seeds": 4,
    "band_widths": (0.1, 0.5, 1.0),
}
QUICK = {"mus": (0.0, 0.5, 1.0, 2.0), "sigmas": (0.5, 0.75, 1.0, 1.5, 2.0), "n": 200, "seeds": 2, "band_widths": (0.5,)}
#: The band width the headline and the criterion use (the library's default).
BAND_WIDTH = 0.5


def cx_grid(dim: int, settings: dict, band_width: float) -> torch.Tensor:
    """Mean CX loss over seeds for every (mu, sigma) of the grid, shape (len(mus), len(sigmas))."""
    n, seeds = settings["n"], settings["seeds"]
    gen = torch.Generator().manual_seed(1000 * dim)
    # The same draws serve every grid point (common random numbers), so the sweeps are smooth.
    y = torch.randn(seeds, dim, 1, n, generator=gen)
    z = torch.randn(seeds, dim, 1, n, generator=gen)
    e1 = torch.zeros(1, dim, 1, 1)
    e1[0, 0] = 1.0
    grid = torch.empty(len(settings["mus"]), len(settings["sigmas"]))
    for a, mu in enumerate(settings["mus"]):
        for b, sigma in enumerate(settings["sigmas"]):
            x = sigma * z + mu * e1
            grid[a, b] = contextual_loss(x, y, band_width=band_width, loss_type="l2", reduction="mean")
    return grid


def kl_grid(dim: int, settings: dict, reverse: bool = False) -> torch.Tensor:
    """Analytic KL(target ‖ prediction) (or the reverse) on the grid."""
    values = [
        [
            gaussian_kl(mu, s, 0.0, 1.0, dim) if reverse else gaussian_kl(0.0, 1.0, mu, s, dim)
            for s in settings["sigmas"]
        ]
        for mu in settings["mus"]
    ]
    return torch.tensor(values, dtype=torch.float64)


def analyse(settings: dict, band_width: float) -> dict[int, dict]:
    out = {}
    mus, sigmas = settings["mus"], settings["sigmas"]
    for dim in DIMS:
        cx = cx_grid(dim, settings, band_width)
        kl, kl_rev = kl_grid(dim, settings), kl_grid(dim, settings, reverse=True)
        mu_sweep, sigma_sweep = cx[:, sigmas.index(1.0)], cx[mus.index(0.0)]
        out[dim] = {
            "cx": cx,
            "kl": kl,
            "rho": spearman(cx.flatten(), kl.flatten()),
            "rho_reverse": spearman(cx.flatten(), kl_rev.flatten()),
            "argmin_mu": mus[int(mu_sweep.argmin())],
            "argmin_sigma": sigmas[int(sigma_sweep.argmin())],
        }
    return out


FINE_SIGMAS = (0.9, 0.95, 1.0, 1.05, 1.1, 1.15, 1.2, 1.3)


def fine_sigma_sweep(dim: int, band_width: float, n: int = 1000, seeds: int = 8) -> list[float]:
    """CX loss for sigma near 1 at mu = 0 with fresh draws, to tell a bias from noise."""
    gen = torch.Generator().manual_seed(7 + dim)
    y = torch.randn(seeds, dim, 1, n, generator=gen)
    z = torch.randn(seeds, dim, 1, n, generator=gen)
    return [float(contextual_loss(s * z, y, band_width=band_width, loss_type="l2")) for s in FINE_SIGMAS]


def _within_one_step(res: dict, settings: dict) -> bool:
    """Each sweep's minimum is the true value or its neighbour on the grid."""
    mus, sigmas = settings["mus"], settings["sigmas"]
    return (
        abs(mus.index(res["argmin_mu"]) - mus.index(0.0)) <= 1
        and abs(sigmas.index(res["argmin_sigma"]) - sigmas.index(1.0)) <= 1
    )


def _figure(results: dict[int, dict], settings: dict) -> object:
    from contextual_loss.viz import require_matplotlib

    figure = require_matplotlib()(figsize=(10, 3.3), layout="constrained")
    scatter, mu_ax, sigma_ax = figure.subplots(1, 3)
    mus, sigmas = settings["mus"], settings["sigmas"]
    for dim, res in results.items():
        scatter.plot(
            res["kl"].flatten().numpy(), res["cx"].flatten().numpy(), "o", ms=3, label=f"d={dim}, rho={res['rho']:.3f}"
        )
        mu_ax.plot(mus, res["cx"][:, sigmas.index(1.0)].numpy(), "o-", ms=3, label=f"d={dim}")
        sigma_ax.plot(sigmas, res["cx"][mus.index(0.0)].numpy(), "o-", ms=3, label=f"d={dim}")
    scatter.set_xscale("symlog", linthresh=0.1)
    scatter.set_xlabel("KL(target ‖ prediction)")
    scatter.set_ylabel("CX loss")
    scatter.set_title("CX loss vs analytic KL", fontsize=10)
    scatter.legend(fontsize=7)
    for ax, name, true in ((mu_ax, "mu (sigma = 1)", 0.0), (sigma_ax, "sigma (mu = 0)", 1.0)):
        ax.axvline(true, color="gray", ls=":")
        ax.set_xlabel(name)
        ax.set_ylabel("CX loss")
        ax.set_title(f"1-D sweep of {name.split()[0]}; dotted: true value", fontsize=10)
        ax.legend(fontsize=7)
    return figure


def main(argv: Sequence[str] | None = None) -> int:
    args = _common.parse_args(__doc__.splitlines()[0], argv)
    timer = _common.Timer()
    settings = QUICK if args.quick else FULL
    by_h = {h: analyse(settings, h) for h in settings["band_widths"]}
    results = by_h[BAND_WIDTH]
    rows = []
    for dim, res in results.items():
        rows.append(
            [dim, f"{res['rho']:.3f}", f"{res['rho_reverse']:.3f}", f"{res['argmin_mu']:g}", f"{res['argmin_sigma']:g}"]
        )
    table = _common.markdown_table(
        [
            "d",
            "Spearman rho vs KL(target ‖ pred)",
            "rho vs KL(pred ‖ target)",
            "argmin over mu (true 0)",
            "argmin over sigma (true 1)",
        ],
        rows,
    )
    print(table)
    rho_ok = all(res["rho"] >= RHO_LIMIT for res in results.values())
    exact = all(res["argmin_mu"] == 0.0 and res["argmin_sigma"] == 1.0 for res in results.values())
    argmin_ok = all(_within_one_step(res, settings) for res in results.values())
    figure = _common.save(_figure(results, settings), args.out, "kl_divergence")
    worst = min(res["rho"] for res in results.values())
    body = [
        "## 3. CX tracks the KL divergence (Mechrez et al., ACCV 2018)",
        "",
        f"Target Y ~ N(0, I), prediction X ~ N(mu e1, sigma^2 I), n = {settings['n']} points each, "
        f"{settings['seeds']} seeds; mu in {list(settings['mus'])}, sigma in {list(settings['sigmas'])}; "
        f"l2 distance, band width {BAND_WIDTH}. Spearman's rho over the "
        f"{len(settings['mus']) * len(settings['sigmas'])} grid points per dimension d:",
        "",
        table,
        "",
        f"**Headline:** rho >= {worst:.3f} for every d (criterion >= {RHO_LIMIT}). The 1-D sweeps have their "
        f"minimum exactly at the true parameter for every d: {'yes' if exact else 'no'}; within one grid step "
        f"of it (the criterion): {'yes' if argmin_ok else 'NO'}.",
    ]
    if len(by_h) > 1:
        body += [
            "",
            "Band width sensitivity (rho vs KL(target ‖ pred); argmin of the mu and sigma sweeps):",
            "",
            _common.markdown_table(
                ["band width", *(f"d={d}" for d in DIMS)],
                [
                    [h, *(f"{r[d]['rho']:.3f} ({r[d]['argmin_mu']:g}, {r[d]['argmin_sigma']:g})" for d in DIMS)]
                    for h, r in by_h.items()
                ],
            ),
        ]
    if not args.quick:
        fine = {d: fine_sigma_sweep(d, BAND_WIDTH) for d in DIMS}
        body += [
            "",
            f"Fine sigma sweep at mu = 0 with fresh draws (n = 1000, 8 seeds, band width {BAND_WIDTH}); CX loss:",
            "",
            _common.markdown_table(
                ["d", *(f"sigma={s:g}" for s in FINE_SIGMAS), "argmin"],
                [
                    [d, *(f"{v:.4f}" for v in vals), f"{FINE_SIGMAS[min(range(len(vals)), key=vals.__getitem__)]:g}"]
                    for d, vals in fine.items()
                ],
            ),
        ]
    body += [
        "",
        "CX follows KL(target ‖ prediction) more closely than the reverse KL: it scores how well each "
        "target point is matched, so a prediction that is too narrow (sigma < 1) or displaced leaves target "
        "points unmatched and is penalised, like the mode-covering KL. Its scale is not KL's (the CX loss "
        "is bounded by log n), so only the ranking is compared. Where a sigma sweep bottoms out above 1 (see "
        "the fine sweep, fresh draws), CX rewards a prediction slightly wider than the target: its extra "
        "spread gives the target's outlying points closer matches. CX approximates the KL ranking; it is not "
        "a divergence whose minimum sits exactly at the truth.",
        "",
        f"![kl](figures/{figure.name})",
        "",
        _common.run_note(args, timer()),
        "",
    ]
    passed = rho_ok and argmin_ok
    body.append(
        _common.verdict(
            passed,
            f"Spearman rho >= {RHO_LIMIT} for d in {DIMS} (worst {worst:.3f}); sweep minima (mu, sigma) "
            + ", ".join(f"d={d}: ({r['argmin_mu']:g}, {r['argmin_sigma']:g})" for d, r in results.items())
            + " within one grid step of (0, 1)",
        )
    )
    _common.update_results(args.out, "kl_divergence", "\n".join(body))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
