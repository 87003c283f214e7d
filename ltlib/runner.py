"""Executing notebooks: validated parameters, papermill, and an output that is replaced only on success.

``python -m ltlib notebook 01_baselines --profile cpu-real [-p name value ...]`` checks the profile's
parameter file and the overrides against the notebook's configuration class (unknown names, types, list
elements, method options) before any kernel starts, then runs papermill into a temporary file beside the
output and moves it into place when every cell has run. A failed or killed run leaves the previous
executed notebook as it was; the partial output is kept as ``<name>.failed.ipynb`` for inspection.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from .io import remove_stale_temporaries
from .notebook import ParameterError, parse_value, read_params_file
from .paths import ROOT
from .studies import config_class

KERNEL = "ltlib"


def notebook_path(notebook: str) -> Path:
    path = ROOT / "notebooks" / f"{notebook}.ipynb"
    if not path.exists():
        raise ParameterError(f"no notebook {path}")
    return path


class MissingRuns(Exception):
    """A ``--store-only`` execution found runs of the notebook missing from the store."""


def missing_runs(notebook: str, profile: str, overrides: dict | None = None) -> list:
    """The planned runs and stages of ``notebook`` under ``profile`` that the run store does not hold."""
    from .store import RunStore
    from .studies import Study

    return Study(config_class(notebook).load(profile, overrides), RunStore(profile)).missing()


def _missing_message(notebook: str, profile: str, missing: list) -> str:
    names = ", ".join(m.label for m in missing[:6])
    more = f" and {len(missing) - 6} more" if len(missing) > 6 else ""
    return (f"{notebook} ({profile}): {len(missing)} of its runs are not in the store: {names}{more}; "
            f"train them with `python -m ltlib sweep params/{profile}/{notebook}.yaml --workers 2`")


def available_overrides(notebook: str, profile: str, overrides: dict | None = None) -> dict:
    """``overrides`` narrowed to the methods whose runs and stages are all in the store.

    A notebook whose sweep is half done can then be read for what is finished; the rendered notebook names the
    methods it leaves out (:func:`ltlib.views.context`). Raises :class:`MissingRuns` when nothing would remain
    or when the runs that remain are not a plan of their own (e.g. a required baseline is missing).
    """
    overrides = dict(overrides or {})
    from .store import RunStore
    from .studies import Study

    study = Study(config_class(notebook).load(profile, overrides), RunStore(profile))
    missing = study.missing()
    if not missing:
        return overrides
    complete = study.complete_methods()
    left_out = [m for m in getattr(study.config, "methods", []) if m not in complete]
    if not complete:
        raise MissingRuns(_missing_message(notebook, profile, missing) + "; no method can be rendered without them")
    if not left_out:  # every method is complete: what is missing belongs to another part of the notebook
        raise MissingRuns(_missing_message(notebook, profile, missing) + "; they belong to no method, so "
                          "--available cannot leave them out")
    narrowed = {**overrides, "methods": complete}
    try:
        still = missing_runs(notebook, profile, narrowed)
    except ParameterError as error:
        raise MissingRuns(f"{notebook} ({profile}): without {left_out} the notebook cannot run: {error}") from None
    if still:
        raise MissingRuns(_missing_message(notebook, profile, still) + f" (besides the methods {left_out})")
    return narrowed


def execute(notebook: str, profile: str, overrides: dict | None = None, output: Path | None = None,
            kernel: str = KERNEL, store_only: bool = False, available: bool = False) -> Path:
    """Run ``notebook`` under ``profile`` into ``output`` (default ``executed/<profile>/<notebook>.ipynb``).

    ``store_only`` refuses when a run is missing; ``available`` renders the methods that are complete instead.
    """
    import papermill

    config_class(notebook).load(profile, overrides)  # fails here, naming the parameter, before a kernel starts
    if available:
        overrides = available_overrides(notebook, profile, overrides)
    elif store_only and (missing := missing_runs(notebook, profile, overrides)):
        raise MissingRuns(_missing_message(notebook, profile, missing)
                          + " (or drop --store-only to train them here, or pass --available to render the rest)")
    params_file = ROOT / "params" / profile / f"{notebook}.yaml"
    parameters = {**(read_params_file(params_file) if params_file.exists() else {}), **(overrides or {}),
                  "profile": profile}
    output = Path(output) if output else ROOT / "executed" / profile / f"{notebook}.ipynb"
    output.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(output.parent)
    partial = output.with_name(f".{output.stem}.running.ipynb")
    failed = output.with_name(f"{output.stem}.failed.ipynb")
    try:
        papermill.execute_notebook(str(notebook_path(notebook)), str(partial), parameters=parameters,
                                   kernel_name=kernel, cwd=str(ROOT / "notebooks"), progress_bar=False,
                                   request_save_on_cell_execute=True)
    except BaseException:
        if partial.exists():
            os.replace(partial, failed)
        raise
    _strip_volatile_metadata(partial)
    os.replace(partial, output)
    failed.unlink(missing_ok=True)
    return output


def _strip_volatile_metadata(path: Path) -> None:
    """Drop papermill's timings and the kernel's paths, so a re-execution from the store gives the same file."""
    nb = json.loads(path.read_text())
    papermill_meta = nb.get("metadata", {}).get("papermill", {})
    for key in ("start_time", "end_time", "duration", "input_path", "output_path", "environment_variables"):
        papermill_meta.pop(key, None)
    for cell in nb["cells"]:
        cell.get("metadata", {}).pop("papermill", None)
        cell.get("metadata", {}).pop("execution", None)
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


def sync_parameters() -> list[Path]:
    """Rewrite each notebook's ``parameters`` cell from its configuration class; returns the files changed."""
    from .studies import CONFIGS

    changed = []
    for cls in CONFIGS:
        path = ROOT / "notebooks" / f"{cls.NOTEBOOK}.ipynb"
        if not path.exists():
            continue
        nb = json.loads(path.read_text())
        cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
        source = cls.parameters_cell()
        if "".join(cell["source"]) != source:
            cell["source"] = source.splitlines(keepends=True)
            path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
            changed.append(path)
    return changed


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m ltlib notebook", description=__doc__.split("\n")[0])
    parser.add_argument("notebook", help="e.g. 01_baselines")
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--output", default=None, help="default: executed/<profile>/<notebook>.ipynb")
    parser.add_argument("-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    parser.add_argument("--store-only", action="store_true",
                        help="render from the run store alone; refuse (exit 3) if a run is missing")
    parser.add_argument("--available", action="store_true",
                        help="render from the run store the methods whose runs are all there, naming the methods "
                             "left out; refuse (exit 3) if none is complete")
    args = parser.parse_args(argv)
    try:
        path = execute(args.notebook, args.profile, {n: parse_value(v) for n, v in args.p},
                       Path(args.output) if args.output else None, store_only=args.store_only,
                       available=args.available)
    except ParameterError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except MissingRuns as error:
        print(f"not rendered: {error}", file=sys.stderr)
        return 3
    print("executed", path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
    return 0
