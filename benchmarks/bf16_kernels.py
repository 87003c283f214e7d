"""Which CPU kernels a stored bf16 run was trained with: its first epoch, retrained under each oneDNN ISA cap.

A bf16 CPU run is bit-identical for the same seed and thread count on one machine, but two CPUs that both have
bfloat16 instructions can still run different kernels: oneDNN uses AMX tiles where the CPU has them and AVX-512 BF16
otherwise, and the two sum in different orders. This script retrains the first epoch of a store entry under the
default kernels and under ``ONEDNN_MAX_CPU_ISA`` caps (oneDNN reads it once, so each cap runs in its own process),
and says which of them gives the entry's epoch bit for bit (loss, accuracy, per-class validation accuracy, as the
entry rounds them), and how long each epoch took. A cap that matches is how this machine reproduces, and goes on,
runs that another CPU model trained. Results go to ``results/benchmarks/bf16-kernels-<cpu>.json`` with provenance.
This is a check, not a test: it needs the run's data and a CPU with bf16 instructions.

    python benchmarks/bf16_kernels.py 7c36163f5c9d84e1                        # a cpu-real entry, default caps
    python benchmarks/bf16_kernels.py KEY --isa default AVX512_CORE_BF16 AVX512_CORE_AMX
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ltlib.io import write_json
from ltlib.paths import ROOT
from ltlib.provenance import cpu_identity, provenance
from ltlib.store import RunStore

CAP = "ONEDNN_MAX_CPU_ISA"


def find_spec(key: str, profile: str):
    """The run spec of ``key`` among the plans of the profile's notebooks."""
    from ltlib.experiment import RunSpec
    from ltlib.sweep import collect

    _, items = collect(sorted((ROOT / "params" / profile).glob("*.yaml")))
    for item in items:
        if item.key == key and isinstance(item.spec, RunSpec):
            return item.spec
    raise SystemExit(f"no run {key} in the plans of params/{profile}/*.yaml: pass a run key of that profile")


def first_epoch(key: str, profile: str) -> dict:
    """Train the first epoch of ``key`` (its checkpoint in a scratch folder, not the cache, so a cached run is
    neither resumed nor overwritten); its compacted history row and the seconds it took."""
    from ltlib.experiment import train_entry

    spec = find_spec(key, profile)
    scratch = Path(tempfile.mkdtemp(prefix="bf16-kernels-")) / "checkpoint.pt"
    started = time.perf_counter()
    entry = train_entry(spec, progress=False, checkpoint=scratch, stop_after=1)
    return {"row": entry["result"]["history"][0], "seconds": round(time.perf_counter() - started, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("key", help="a run key of the profile's store (runs/<profile>/<key>.json)")
    parser.add_argument("--profile", default="cpu-real")
    parser.add_argument("--isa", nargs="+", default=["default", "AVX512_CORE_BF16"],
                        help=f"'default' (no cap) and {CAP} values, e.g. AVX512_CORE_BF16 (no AMX)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(first_epoch(args.key, args.profile)))
        return 0

    store = RunStore(args.profile)
    stored = store.get(args.key)
    if stored is None or stored.get("kind") != "train":
        raise SystemExit(f"{store.folder} holds no training run {args.key}: pass the key of a stored run")
    stored_row = stored["result"]["history"][0]
    caps = []
    for isa in args.isa:
        env = {k: v for k, v in os.environ.items() if k != CAP}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))  # this checkout's ltlib
        if isa != "default":
            env[CAP] = isa
        out = subprocess.run([sys.executable, __file__, args.key, "--profile", args.profile, "--child"], env=env,
                             cwd=ROOT, capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(f"the first epoch under {isa} failed:\n{out.stderr[-2000:]}")
        found = json.loads(out.stdout.strip().splitlines()[-1])
        same = found["row"] == stored_row
        caps.append({"isa": isa, "same_as_entry": same, "seconds": found["seconds"],
                     "train_loss": found["row"]["train_loss"], "val_balanced": found["row"]["val_balanced"]})
        print(f"{isa:<18} first epoch {'matches' if same else 'differs from'} the entry "
              f"(loss {found['row']['train_loss']} vs {stored_row['train_loss']}; {found['seconds']:.0f} s)")
    stored_cpu = stored["provenance"].get("cpu", {})
    result = {"key": args.key, "profile": args.profile, "method": stored["spec"]["method"], "seed": stored["seed"],
              "entry_device": stored["provenance"]["device"], "entry_cpu": stored_cpu or "not recorded",
              "entry_first_epoch": {"train_loss": stored_row["train_loss"], "val_balanced": stored_row["val_balanced"]},
              "caps": caps, "provenance": provenance("cpu")}
    isa = cpu_identity().get("isa", [])
    tag = "amx" if "amx_bf16" in isa else "avx512bf16" if "avx512_bf16" in isa else "cpu"
    path = args.out or ROOT / "results" / "benchmarks" / f"bf16-kernels-{tag}.json"
    write_json(path, result)
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
