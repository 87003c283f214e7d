"""The summary notebook's tables: each paper's claim against what this profile measured, and cross-paper tables.

Everything is read from the run store through the other notebooks' own configurations (their plans under the
same profile): nothing is trained here, and a run the store lacks is reported as "not run".
"""
from __future__ import annotations

import pandas as pd

from .analysis import compare, mean_std, select
from .methods import reconstructed_from
from .reference import NOT_AVAILABLE, best_match, comparability
from .studies import RECIPES, Study, study_for

NOTEBOOKS = ("01_baselines", "02_cdb_loss", "03_difficulty_net", "04_dlsa", "05_intra_inter_balance")


def load_studies(profile: str) -> dict[str, Study]:
    return {nb: study_for(nb, profile) for nb in NOTEBOOKS}


def _records(study: Study, *roles: str) -> list[dict]:
    """The records of ``roles`` that the store holds: a sweep half done shows what is done, with its seeds."""
    return [r for role in roles for r in study.records(role, stored_only=True)]


def _setting(study: Study, dataset: str | None = None, imbalance: float | None = None) -> dict:
    c = study.config
    data = f"{dataset} IF {imbalance:g}" if dataset else ", ".join(f"{s} IF {i:g}" for s in c.sources for i in c.imbalances)
    return {"data": data, "protocol": c.protocol,
            "schedule": f"{c.epochs} of {RECIPES[c.recipe].epochs} epochs ({c.recipe} recipe), {c.model}"}


def _paper_number(paper: str, method: str, study: Study, dataset: str, imbalance: float) -> tuple[str, str, str]:
    c = study.config
    row = best_match(paper, method, dataset, imbalance)
    if row is None:
        return "–", "–", "no published number for this method"
    where = f"{row['dataset']} IF {row['imbalance']:g}, {row['model']}, {row['epochs']} ep ({row['source']})"
    return (f"{row['top1']:.2f}", where, comparability(row, dataset=dataset, imbalance=imbalance,
                                                       protocol=c.protocol, model=c.model, epochs=c.epochs))


CLAIMS = [
    ("Baselines (Cao et al.; Ren et al.)", "01_baselines", ("main",), "baselines", "balanced_softmax", "ce", "few",
     "Balanced Softmax has better few-shot accuracy than CE"),
    ("CDB loss (Sinha et al., ACCV 2020)", "02_cdb_loss", ("main",), "cdb", "cdb_ce", "ce", "top1",
     "CDB-CE has a higher top-1 than CE"),
    ("Difficulty-Net (Sinha & Ohashi, WACV 2023)", "03_difficulty_net", ("main", "stage2"), "difficulty_net",
     "difficulty_net + las_lws", "ce + las_lws", "top1",
     "Difficulty-Net (+ stage 2) has a higher top-1 than CE (+ stage 2)"),
    ("Difficulty-Net as released (its official code's detached meta step)", "03_difficulty_net", ("main", "stage2"),
     "difficulty_net", "difficulty_net_as_released + las_lws", "ce + las_lws", "top1",
     "Difficulty-Net as released (+ stage 2) has a higher top-1 than CE (+ stage 2)"),
    ("DLSA (Xu et al., ECCV 2022)", "04_dlsa", ("dlsa",), "dlsa", "ce + dlsa1", "ce + bsm", "top1",
     "DLSA on CE features beats the same Balanced-Softmax classifier without division"),
    ("Intra-/inter-category balance (Zhang et al., ICASSP 2022) — reconstruction", "05_intra_inter_balance", ("main",),
     "intra_inter", "intra_inter", "ce", "few",
     "intra_inter raises few-shot accuracy over CE (the claim's 'tail raised' half; 05 also judges 'head kept')"),
]


def claim_rows(studies: dict[str, Study]) -> pd.DataFrame:
    """One row per paper and data set: the claim, what ran, our number ± std, the paper's, comparability, verdict."""
    rows = []
    for paper, notebook, roles, key, method, baseline, metric, claim in CLAIMS:
        study = studies[notebook]
        records = [r for r in _records(study, *roles) if r["selected_on"] == "val"]
        groups = sorted({(r["dataset"], r["imbalance"]) for r in records}) or [(None, None)]
        for dataset, imbalance in groups:
            subset = select(records, dataset=dataset, imbalance=imbalance) if dataset else []
            ours = [r[metric] for r in select(subset, method=method)]
            setting = _setting(study, dataset, imbalance)
            if not ours:
                rows.append({"paper": paper, "claim": claim, **setting, "seeds": 0, "ours": "not run", "baseline": "–",
                             "paired diff": "–", "paper's number": "–", "paper's setting": "–", "comparable?": "–",
                             "verdict": "not run"})
                continue
            c = compare(subset, method, baseline, metric)
            if key in NOT_AVAILABLE:
                number, where, comparable = "not available", NOT_AVAILABLE[key], "–"
            else:
                number, where, comparable = _paper_number(key, method if metric == "top1" else baseline, study, dataset,
                                                          imbalance)
                if metric != "top1":
                    where = f"(top-1 of {baseline}, for scale) {where}"
            setting["seeds"] = len({r["seed"] for r in select(subset, method=method)})  # those in the store
            rows.append({"paper": paper, "claim": claim, **setting, "ours": f"{metric} {mean_std(ours)}",
                         "baseline": f"{baseline} {mean_std([r[metric] for r in select(subset, method=baseline)])}",
                         "paired diff": f"{c.mean:+.2f} (95% CI ±{c.half_width:.2f})" if c.n > 1 else
                         (f"{c.mean:+.2f} (1 seed)" if c.n else "–"),
                         "paper's number": number, "paper's setting": where, "comparable?": comparable,
                         "verdict": c.verdict})
    return pd.DataFrame(rows)


def cross_tables(studies: dict[str, Study]) -> dict[str, pd.DataFrame]:
    """Methods of several papers on the same data and schedule, each against that setting's CE (paired by seed)."""
    settings = {
        "ldam protocol, LDAM-DRW recipe": [("01_baselines", "main"), ("05_intra_inter_balance", "main"), ("04_dlsa", "dlsa")],
        "cdb protocol, CDB recipe": [("02_cdb_loss", "main"), ("03_difficulty_net", "main"), ("03_difficulty_net", "stage2")],
    }
    tables = {}
    for title, parts in settings.items():
        records, seen = [], set()
        for notebook, role in parts:
            for r in _records(studies[notebook], role):
                if r["selected_on"] != "val" or (r["method"], r["seed"], r.get("stage_seed")) in seen:
                    continue
                seen.add((r["method"], r["seed"], r.get("stage_seed")))
                records.append({**r, "notebook": notebook})
        if not records:
            continue
        study = studies[parts[0][0]]
        for dataset, imbalance in sorted({(r["dataset"], r["imbalance"]) for r in records}):
            subset = select(records, dataset=dataset, imbalance=imbalance)
            rows = []
            for method in dict.fromkeys(r["method"] for r in subset):
                mine = select(subset, method=method)
                baseline = "ce + las_lws" if method.endswith("+ las_lws") else ("ce + bsm" if "+ dlsa" in method else "ce")
                c = compare(subset, method, baseline, "top1") if method != baseline else None
                notebook = mine[0]["notebook"]
                if reconstructed_from(method):
                    notebook += " (reconstruction)"
                rows.append({"method": method, "notebook": notebook,
                             **{g: mean_std([r[g] for r in mine]) for g in ("top1", "many", "medium", "few")},
                             "vs": baseline if c else "–", "top-1 diff": f"{c.mean:+.2f}" if c and c.n else "–",
                             "verdict": c.verdict if c else "–", "seeds": len({r["seed"] for r in mine})})
            tables[f"{title}: {dataset} IF {imbalance:g}, {_setting(study)['schedule']}"] = pd.DataFrame(rows)
    return tables
