"""What notebooks show: computed sentences, tables and the context line of a study, in one place.

Every sentence that depends on a result is built here or in the notebook from the records, never typed in,
so the same notebook reads truthfully under quick, cpu-real and paper.
"""
from __future__ import annotations

from typing import Iterable, Sequence

from .analysis import Comparison, fmt
from .methods import reconstructed_from
from .provenance import trained_on


def in_notebook() -> bool:
    try:
        from IPython import get_ipython

        shell = get_ipython()
        return shell is not None and shell.__class__.__name__ == "ZMQInteractiveShell"
    except ImportError:
        return False


def say(markdown: str) -> None:
    """Show a computed paragraph (Markdown in a notebook, plain text elsewhere)."""
    if in_notebook():
        from IPython.display import Markdown, display

        display(Markdown(markdown))
    else:
        print(markdown)


def show(table, title: str | None = None) -> None:
    """Show a pandas DataFrame (as text, so a reader of the .ipynb file and of the rendered page see the same)."""
    if title:
        print(title)
    print(table.to_string(index=False) if len(table) else "(no rows)", end="\n\n")


def seeds_text(seeds: Iterable[int]) -> str:
    seeds = sorted(set(seeds))
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"{len(seeds)} seeds ({', '.join(map(str, seeds))})"


def over_seeds(seeds: Iterable[int]) -> str:
    """For a caption: "mean over 3 seeds (0, 1, 2)", or "seed 0 (one seed)"."""
    seeds = sorted(set(seeds))
    return f"mean over {seeds_text(seeds)}" if len(seeds) > 1 else f"seed {seeds[0]} (one seed)"


def context(study, role: str = "main") -> str:
    """One line: profile, data, model, schedule, seeds and where the runs came from."""
    config = study.config
    items = study.select(role)
    runs = [p for p in items if not p.is_stage]
    if not runs:
        return f"profile **{config.profile}**: no training runs in this part"
    specs = [p.spec for p in runs]
    data = sorted({(s.data.source, s.data.imbalance, s.data.protocol) for s in specs})
    data_text = "; ".join(f"{source} IF {imbalance:g} ({protocol} protocol)" for source, imbalance, protocol in data)
    epochs = sorted({s.train.epochs for s in specs})
    precision = sorted({"bf16" if s.train.amp else "fp32" for s in specs})
    devices = sorted({s.device for s in specs})
    trained = sum(p.key in study.computed for p in items)
    return (f"profile **{config.profile}** · {data_text} · {specs[0].model} · {'/'.join(map(str, epochs))} epochs "
            f"({'/'.join(precision)}, {'/'.join(devices)}) · {seeds_text(s.seed for s in specs)} · "
            f"{len(items)} entries of `runs/{config.profile}/`, {trained} computed in this execution"
            + left_out_text(study))


def left_out_text(study) -> str:
    """'' or a sentence naming the methods of the profile's parameter file that this rendering leaves out.

    A notebook rendered with ``--available`` (or ``-p methods``) shows fewer methods than its profile plans; the
    reader is told which, and how many of their store entries exist.
    """
    from .studies import Study

    config = study.config
    if not hasattr(config, "methods"):
        return ""
    profile_methods = type(config).load(config.profile).methods
    absent = [m for m in profile_methods if m not in config.methods]
    if not absent:
        return ""
    # the plan this rendering would have with all the profile's methods (its other parameters unchanged)
    whole = Study(type(config).from_values({**config.as_dict(), "methods": profile_methods}), study.store)
    parts = []
    for method in absent:
        mine = whole.method_items(method)
        parts.append(f"`{method}` ({sum(p.key in study.store for p in mine)} of its {len(mine)} runs and stages "
                     "in the store)")
    return (f"<br>**This rendering leaves out** {names(parts)}, planned by `params/{config.profile}/"
            f"{config.NOTEBOOK}.yaml`: its results and verdicts cover the other methods only.")


def weights_note(study, *roles: str) -> str:
    """A sentence for the stages of ``roles`` that ran on backbone weights other than their stored run's ('' if none).

    A backbone whose checkpoint is gone is trained again; in bf16 on another CPU model it ends elsewhere, and the
    stage entry records that (``backbone_weights``). The backbone's own rows stay the stored run's.
    """
    differing = {}
    for item in [item for role in roles for item in study.select(role)]:
        if not item.is_stage:
            continue
        stage = study.get(item)
        origin = stage.result.get("backbone_weights") or {}
        parent = item.spec.parent
        if origin.get("same_as_entry") is False and (parent.key() not in differing or origin["retrained"]):
            differing[parent.key()] = (f"{item.info('backbone') or item.name.split(' + ')[0]} seed {parent.seed}", origin,
                                       stage.entry["provenance"]["device"],
                                       trained_on(study.store.get(parent.key())["provenance"]))
    if not differing:
        return ""
    parts = [f"{name} ({'retrained' if origin['retrained'] else 'cached'} weights {origin['last_test_top1']:.2f} on "
             f"{device}; stored run {origin['entry_last_test_top1']:.2f} on {stored_device})"
             for name, origin, device, stored_device in differing.values()]
    return (f"The stages on {names(parts)} (last-epoch test top-1) ran on backbone weights that are not the stored "
            "run's: a backbone is trained again where its checkpoint is gone, and bf16 training on another CPU model "
            "ends elsewhere. Those backbones' own rows are the stored runs; their stages describe the other weights.")


def verdict_sentence(comparison: Comparison, claim: str) -> str:
    """``claim``: **holds** / **does not hold** / **cannot be separated** — with the numbers behind it."""
    word = {"holds": "**holds**", "does not hold": "**does not hold**", "no paired seeds": "**not run**",
            "not separable": "**cannot be separated at this budget**"}[comparison.verdict]
    return f"{claim}: {word} — {comparison.sentence()}."


LABELS = {"ce": "CE", "focal": "Focal", "cb": "Class-balanced", "cb_focal": "CB-Focal", "ce_drw": "CE-DRW",
          "ldam": "LDAM", "ldam_drw": "LDAM-DRW", "balanced_softmax": "Balanced Softmax", "logit_adjust": "Logit adjustment",
          "cdb_ce": "CDB-CE", "cdb_focal": "CDB-Focal", "cdb_ce_normalised": "CDB-CE (normalised difficulty)",
          "difficulty_net": "Difficulty-Net (exact)", "difficulty_net_as_released": "Difficulty-Net (as released)",
          "ghm": "GHM-C", "intra_inter": "intra + inter"}
OPTION_LABELS = {"tau=sigmoid": "τ = σ(b)", "tau=2sigmoid": "τ = 2σ(b−1)", "inter=false": "intra only",
                 "intra=false": "inter only", "target=absolute": "absolute target", "driver_weight=0": "no driver loss"}
STAGE_LABELS = {"las_lws": "LAS + LWS", "lws": "LWS", "crt": "cRT", "bsm": "BSM"}


def label(name: str) -> str:
    """A method's name as a reader expects it in a legend: ``cdb_ce:tau=2sigmoid + las_lws`` -> ``CDB-CE, τ = 2σ(b−1) +
    LAS + LWS``; tables keep the identifiers, which name the runs."""
    base, *stages = [part.strip() for part in name.split(" + ")]
    method, _, options = base.partition(":")
    text = LABELS.get(method, method)
    for option in filter(None, options.split(",")):
        key, _, value = option.partition("=")
        if method == "intra_inter" and option in ("inter=false", "intra=false"):
            text = OPTION_LABELS[option]  # one part switched off: the other one alone
            continue
        text += ", " + OPTION_LABELS.get(option, f"{'τ' if key == 'tau' else key.replace('_', ' ')} = {value}")
    if reconstructed_from(method):
        text += " (reconstruction)"
    for stage in stages:
        stage, _, extra = stage.partition(",")
        if stage.startswith("dlsa"):
            word = f"DLSA (depth {stage[4:]})"
        else:
            word = STAGE_LABELS.get(stage, stage)
        text += f" + {word}" + (f", {extra.strip().replace('z=x', 'z = x')}" if extra else "")
    return text


def delta_text(value: float, digits: int = 1) -> str:
    return "–" if value != value else f"{value:+.{digits}f}"


def counted(n: int, noun: str) -> str:
    """``1 seed``, ``3 seeds``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def names(items: Sequence[str]) -> str:
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


__all__ = ["context", "counted", "delta_text", "fmt", "in_notebook", "label", "names", "over_seeds", "say", "seeds_text", "show",
           "verdict_sentence", "weights_note"]
