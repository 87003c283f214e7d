"""Each notebook's configuration and the runs it needs, so notebooks and the sweep runner agree on them.

A notebook is a view of the run store: its configuration class (declared here, one per notebook) turns
its parameters into a *plan*, the list of training runs and post-hoc stages it shows, each with the name
it has in tables and the part of the notebook (``role``) that uses it. :class:`Study` reads the plan's
entries from the store, trains only what is missing (``ensure``, through :mod:`ltlib.sweep`), and writes
``results/<profile>/<notebook>.json``, derived from the store: every record carries the ``run_key`` of
its store entry, and only records of the runs in the current plan are written.

Schedules are scaled from a paper's recipe (:data:`RECIPES`): the epochs change, the milestones, warm-up
and deferred re-weighting keep their proportions, batch size and learning rate stay.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from .data import PROTOCOLS, SOURCES
from .executor import Planned, cpu_bf16_training, execute
from .experiment import DataSpec, RunSpec
from .io import file_lock, write_json
from .losses import las_smoothing_for_imbalance
from .methods import MethodRef
from .metrics import ShotThresholds, shot_thresholds
from .models import MODELS
from .notebook import NotebookConfig, ParameterError, param
from .paths import ROOT, cache_dir, results_dir
from .runtime import DeviceError, emulated_bf16_problem, parse_device, resolve_device
from .stages import StageSpec
from .store import RunStore
from .train import COMPILE_MODES, SCHEDULES, TrainConfig

# ------------------------------------------------------------------------------------------------ recipes

@dataclass(frozen=True)
class Recipe:
    """A paper's schedule: its length, lr milestones, warm-up and deferred re-weighting epoch."""

    name: str
    epochs: int
    milestones: tuple[int, ...]
    warmup_epochs: int
    drw_epoch: int | None
    source: str

    def scaled(self, epochs: int) -> dict:
        """The schedule at ``epochs``: every epoch count times epochs / self.epochs, rounded half up."""
        f = epochs / self.epochs

        def at(e: int) -> int:
            return int(math.floor(e * f + 0.5))
        out = {"epochs": epochs, "milestones": [at(m) for m in self.milestones],
               "warmup_epochs": max(1, at(self.warmup_epochs)) if self.warmup_epochs else 0}
        if self.drw_epoch is not None:
            out["drw_epoch"] = at(self.drw_epoch)
        return out


RECIPES = {
    "ldam_drw": Recipe("ldam_drw", 200, (160, 180), 5, 160, "kaidic/LDAM-DRW cifar_train.py"),
    "cdb": Recipe("cdb", 240, (160, 210), 0, None, "hitachi-rd-cv/CDB-loss CIFAR-LT/cifar_train.py"),
}



# ------------------------------------------------------------------------------------------------ configs

@dataclasses.dataclass
class TrainingConfig(NotebookConfig):
    """Parameters of notebooks that train models (01, 02, 03, 05; the backbones of 04)."""

    sources: list[str] = param(["digits"], "data sets: digits | cifar10-jpeg | cifar10 | cifar100 | mnist")
    imbalances: list[float] = param([10.0], "imbalance factors n_max / n_min", min=1)
    protocol: str = param("ldam", "long-tail protocol: ldam (seeded shuffle) | cdb (validation held out, first-n)",
                          choices=PROTOCOLS)
    val_per_class: int | None = param(None, "validation images per class, which choose the reported epoch (None: 25; "
                                      "digits 10)", min=1)
    model: str = param("small_cnn", "small_cnn | resnet32 | resnet10 | resnet18 ... (ltlib.models.MODELS)")
    methods: list[str] = param(["ce"], "methods by name, with options as 'cdb_ce:tau=1.5' (ltlib.methods.METHODS)")
    seeds: list[int] = param([0, 1, 2], "training seeds", min=0)
    recipe: str = param("ldam_drw", "the paper recipe this schedule is scaled from (ltlib.studies.RECIPES)")
    epochs: int = param(15, "training epochs", min=1)
    batch_size: int = param(64, "batch size", min=1)
    lr: float = param(0.05, "learning rate (SGD)", min=0)
    momentum: float = param(0.9, "SGD momentum", min=0)
    weight_decay: float = param(0.0005, "weight decay", min=0)
    schedule: str = param("multistep", "learning-rate schedule: multistep | cosine", choices=SCHEDULES)
    milestones: list[int] = param([12, 14], "epochs (0-based) from which lr is multiplied by gamma", min=0,
                                  empty_ok=True)
    gamma: float = param(0.01, "lr factor at each milestone", min=0)
    warmup_epochs: int = param(1, "linear warm-up epochs", min=0)
    drw_epoch: int = param(12, "deferred re-weighting starts here (DRW methods only)", min=0)
    drw_beta: float = param(0.9999, "effective-number beta of deferred re-weighting", min=0)
    no_bias_decay: bool = param(False, "no weight decay on the classifier bias (CDB code)")
    amp: bool = param(False, "bfloat16 autocast (CPU with AVX-512 BF16, CUDA)")
    channels_last: bool = param(False, "channels-last memory format")
    test_every: int = param(5, "evaluate the test split every k-th epoch for the curves (0: last only)", min=0)
    compile: str = param("none", "torch.compile the plain step: none | default | reduce-overhead (methods with their "
                         "own step run eagerly)", choices=COMPILE_MODES)
    device: str = param("cpu", "cpu | cuda | cuda:N")
    cpu_threads: int = param(1, "CPU threads per run (part of a CPU run's identity)", min=1)
    workers: int = param(1, "runs trained in parallel when some are missing (does not change results)", min=1)
    many_above: int | None = param(None, "many-shot: more training images than this (None: the data set's)")
    few_below: int | None = param(None, "few-shot: fewer training images than this (None: the data set's)")

    def check(self) -> None:
        for source in self.sources:
            if source not in SOURCES:
                raise ParameterError(f"{self.NOTEBOOK}: unknown data set {source!r} in sources; choose from {SOURCES}")
        if self.model not in MODELS:
            raise ParameterError(f"{self.NOTEBOOK}: unknown model {self.model!r}; choose one of {sorted(MODELS)}")
        if self.recipe not in RECIPES:
            raise ParameterError(f"{self.NOTEBOOK}: unknown recipe {self.recipe!r}; choose one of {sorted(RECIPES)}")
        try:
            parse_device(self.device)
        except DeviceError as error:
            raise ParameterError(f"{self.NOTEBOOK}: {error}") from None
        for entry in self.method_entries():
            self.method_ref(entry)
        self.train_config()

    def method_entries(self) -> list[str]:
        return list(self.methods)

    def method_ref(self, entry: str) -> MethodRef:
        try:
            ref = MethodRef.parse(entry, {"drw_epoch": self.drw_epoch, "drw_beta": self.drw_beta})
            ref.check()
        except (ValueError, TypeError) as error:
            raise ParameterError(f"{self.NOTEBOOK}: method {entry!r}: {error}") from None
        return ref

    def train_config(self, **overrides) -> TrainConfig:
        values = dict(epochs=self.epochs, batch_size=self.batch_size, lr=float(self.lr),
                      momentum=float(self.momentum), weight_decay=float(self.weight_decay), schedule=self.schedule,
                      milestones=tuple(self.milestones), gamma=float(self.gamma), warmup_epochs=self.warmup_epochs,
                      no_bias_decay=self.no_bias_decay, amp=self.amp, channels_last=self.channels_last,
                      test_every=self.test_every, compile=self.compile)
        values.update(overrides)
        try:
            return TrainConfig(**values)
        except TypeError as error:
            raise ParameterError(f"{self.NOTEBOOK}: {error}") from None

    def thresholds(self, source: str) -> ShotThresholds:
        return shot_thresholds(source, self.many_above, self.few_below)

    def run_spec(self, entry: str, source: str, imbalance: float, seed: int, *, train: TrainConfig | None = None,
                 drw_epoch: int | None = None, shape: str = "exp", protocol: str | None = None) -> RunSpec:
        extra = {"drw_epoch": self.drw_epoch if drw_epoch is None else drw_epoch, "drw_beta": self.drw_beta}
        method = MethodRef.parse(entry, extra)
        train = train or self.train_config()
        if train.compile != "none" and not method.plain_step():
            # a method with its own step (meta-learning) runs eagerly, and its key says so
            train = dataclasses.replace(train, compile="none")
        data = DataSpec(source, float(imbalance), protocol or self.protocol, shape, self.val_per_class)
        return RunSpec(data, self.model, method, train, int(seed), self.device, self.cpu_threads)

    def grid(self, methods: list[str] | None = None, role: str = "main") -> list[Planned]:
        return [Planned(self.run_spec(entry, source, imbalance, seed), entry, role)
                for source in self.sources for imbalance in self.imbalances
                for entry in (methods or self.methods) for seed in self.seeds]

    def scaled(self, epochs: int) -> tuple[TrainConfig, int | None]:
        """This notebook's schedule at another length, scaled from its recipe."""
        schedule = RECIPES[self.recipe].scaled(epochs)
        drw = schedule.pop("drw_epoch", None)
        schedule["milestones"] = tuple(schedule["milestones"])
        return self.train_config(**schedule), drw

    def plan(self) -> list[Planned]:
        return self.grid()


@dataclasses.dataclass
class DataNotebook(NotebookConfig):
    NOTEBOOK: ClassVar[str] = "00_long_tailed_data"

    source: str = param("digits", "data set whose splits are built and shown")
    imbalances: list[float] = param([10.0, 100.0], "imbalance factors shown for the data set", min=1)
    protocols: list[str] = param(["ldam", "cdb"], "protocols shown", choices=PROTOCOLS)
    val_per_class: int | None = param(None, "validation images per class, as in the training notebooks (None: 25; "
                                      "digits 10)", min=1)
    samples_per_class: int = param(6, "sample images shown per class", min=1)
    seed: int = param(0, "seed of the augmentation demo", min=0)

    def check(self) -> None:
        if self.source not in SOURCES:
            raise ParameterError(f"{self.NOTEBOOK}: unknown data set {self.source!r}; choose from {SOURCES}")

    def plan(self) -> list[Planned]:
        return []


@dataclasses.dataclass
class BaselinesNotebook(TrainingConfig):
    NOTEBOOK: ClassVar[str] = "01_baselines"

    methods: list[str] = param(["ce", "focal", "cb", "ldam_drw", "balanced_softmax"], "baseline methods")
    schedule_epochs: list[int] = param([5, 10, 15], "lengths of the scaled recipe to compare (schedule study)",
                                       min=1, empty_ok=True)
    schedule_methods: list[str] = param(["ce", "ldam_drw"], "methods of the schedule study")
    schedule_seed: int = param(0, "seed of the schedule study", min=0)
    schedule_target: float = param(60.0, "top-1 (%) cross-entropy should reach at the chosen length", min=0)
    precision_epochs: int = param(5, "length of the bf16-vs-fp32 check (0: no check)", min=0)
    precision_method: str = param("ce", "method of the bf16-vs-fp32 check")
    precision_seeds: list[int] = param([0, 1], "seeds of the bf16-vs-fp32 check (paired)", min=0)
    study_compile: str = param("none", "torch.compile mode of the schedule study and the precision check (they "
                               "compare lengths and precisions; compiling them changes their keys, not their point)",
                               choices=COMPILE_MODES)

    def method_entries(self) -> list[str]:
        return list(self.methods) + list(self.schedule_methods) + [self.precision_method]

    def plan(self) -> list[Planned]:
        items = self.grid()
        for epochs in self.schedule_epochs:
            train, drw = self.scaled(epochs)
            train = dataclasses.replace(train, compile=self.study_compile)
            items += [Planned(self.run_spec(m, s, i, self.schedule_seed, train=train, drw_epoch=drw), m, "schedule",
                              (("epochs", epochs),))
                      for s in self.sources for i in self.imbalances for m in self.schedule_methods]
        if self.precision_epochs:
            for amp in (False, True):
                train, drw = self.scaled(self.precision_epochs)
                train = dataclasses.replace(train, amp=amp, compile=self.study_compile)
                items += [Planned(self.run_spec(self.precision_method, s, i, seed, train=train, drw_epoch=drw),
                                  f"{self.precision_method} ({'bf16' if amp else 'fp32'})", "precision",
                                  (("amp", amp),))
                          for s in self.sources for i in self.imbalances for seed in self.precision_seeds]
        return items


@dataclasses.dataclass
class CDBRecipeConfig(TrainingConfig):
    """The official CDB CIFAR recipe's defaults (25 held out per class, batch 32, no decay on the classifier bias),
    shared by notebooks 02 and 03: Difficulty-Net's CIFAR pipeline is CDB's."""

    protocol: str = param("cdb", "long-tail protocol (the official CDB code's: 25 held out per class, first-n)",
                          choices=PROTOCOLS)
    recipe: str = param("cdb", "the paper recipe this schedule is scaled from (ltlib.studies.RECIPES)")
    batch_size: int = param(32, "batch size (official CDB CIFAR code: 32)", min=1)
    milestones: list[int] = param([10, 13], "epochs (0-based) from which lr is multiplied by gamma", min=0,
                                  empty_ok=True)
    warmup_epochs: int = param(0, "linear warm-up epochs", min=0)
    no_bias_decay: bool = param(True, "no weight decay on the classifier bias (official CDB code)")


@dataclasses.dataclass
class CDBNotebook(CDBRecipeConfig):
    NOTEBOOK: ClassVar[str] = "02_cdb_loss"

    methods: list[str] = param(["ce", "focal", "cb", "cdb_ce", "cdb_ce:tau=1", "cdb_ce:tau=1.5", "cdb_ce:tau=2sigmoid",
                                "cdb_focal", "cdb_ce:min_difficulty=0.05"], "methods compared")
    baseline: str = param("ce", "the method every CDB variant is compared with")
    weight_methods: list[str] = param(["cdb_ce:tau=1.5", "cdb_ce"], "CDB variants whose weights are drawn")
    mnist_imbalance: float = param(10.0, "imbalanced-MNIST experiment: step profile, half the classes minority",
                                   min=1)
    mnist_methods: list[str] = param(["ce", "cdb_ce"], "methods of the imbalanced-MNIST experiment")

    def check(self) -> None:
        super().check()
        for name, entries in (("weight_methods", self.weight_methods), ("baseline", [self.baseline])):
            absent = [e for e in entries if e not in self.methods]
            if absent:
                raise ParameterError(f"{self.NOTEBOOK}: {name} {absent} must be among methods {self.methods}")
        if not any(MethodRef.parse(m).name.startswith("cdb") for m in self.methods):
            raise ParameterError(f"{self.NOTEBOOK}: methods {self.methods} hold no CDB variant (cdb_ce, cdb_focal, ...)")

    def method_entries(self) -> list[str]:
        return list(self.methods) + list(self.mnist_methods)

    def mnist_available(self) -> bool:
        from .data import DataNotFoundError, mnist_files

        try:
            mnist_files()
            return True
        except DataNotFoundError:
            return False

    def plan(self) -> list[Planned]:
        items = self.grid()
        if self.mnist_available():
            items += [Planned(self.run_spec(m, "mnist", self.mnist_imbalance, seed, shape="step"), m, "mnist")
                      for m in self.mnist_methods for seed in self.seeds]
        return items


@dataclasses.dataclass
class DifficultyNetNotebook(CDBRecipeConfig):
    NOTEBOOK: ClassVar[str] = "03_difficulty_net"

    methods: list[str] = param(["ce", "cdb_ce", "difficulty_net", "difficulty_net_as_released",
                                "difficulty_net:target=absolute", "difficulty_net:driver_weight=0"], "methods compared")
    stage2_epochs: int = param(10, "stage-2 epochs (official CIFAR: 50, cosine from lr 0.05)", min=1)
    stage2_lr: float = param(0.05, "stage-2 learning rate", min=0)
    stage2_weight_decay: float = param(0.0001, "stage-2 weight decay", min=0)
    stage2_batch_size: int = param(128, "stage-2 batch size", min=1)
    stage2_trainable: str = param("fc+scale", "fc+scale (CIFAR code) | scale (LWS, ImageNet code) | fc (cRT)",
                                  choices=("fc+scale", "scale", "fc"))
    stage2_views: int = param(2, "feature views of the training set: 1 clean + augmented ones", min=1)

    def stage2_options(self, imbalance: float) -> dict:
        # The official stage-2 script picks LAS's ε from its --imbalance argument, the nominal factor; the
        # realised n_max / n_min can cross a threshold (4975 / 49 ≈ 101.5 under the cdb protocol at IF 100).
        smooth_head, smooth_tail = las_smoothing_for_imbalance(imbalance)
        return {"trainable": self.stage2_trainable, "loss": "las", "smooth_head": smooth_head,
                "smooth_tail": smooth_tail,
                "epochs": self.stage2_epochs, "batch_size": self.stage2_batch_size, "lr": float(self.stage2_lr),
                "momentum": 0.9, "weight_decay": float(self.stage2_weight_decay), "samples_per_class": 4,
                "views": self.stage2_views, "cpu_threads": 1}

    def stage2_smoothing(self) -> str:
        """Label-aware smoothing's ε (head / tail) of the stage-2 runs, per imbalance factor."""
        return ", ".join(f"IF {imbalance:g}: ε {head:g} / {tail:g}" for imbalance in self.imbalances
                         for head, tail in [las_smoothing_for_imbalance(imbalance)])

    def plan(self) -> list[Planned]:
        items = self.grid()
        kind = {"fc+scale": "las_lws", "scale": "lws", "fc": "crt"}[self.stage2_trainable]
        items += [Planned(StageSpec.make("classifier", self.stage2_options(p.spec.data.imbalance), p.spec, 0,
                                         self.device), f"{p.name} + {kind}", "stage2") for p in list(items)]
        return items


@dataclasses.dataclass
class DLSANotebook(TrainingConfig):
    NOTEBOOK: ClassVar[str] = "04_dlsa"

    methods: list[str] = param(["ce", "balanced_softmax"], "backbones: stage-1 methods whose features DLSA works on")
    depths: list[int] = param([1, 2], "flow filters before the regular classifier (official: 1 for CE/CBS "
                              "features, 3 for PaCo)", min=1)
    dlsa_seeds: list[int] = param([0], "seeds of the flows and classifiers on each backbone's features", min=0)
    proportion: float = param(0.3, "share of the remaining training samples each flow takes (official 0.3)", min=0)
    num_clusters: int = param(20, "Gaussian-mixture components K (official: 500 on ImageNet-LT)", min=2)
    flow_epochs: int = param(20, "flow epochs (official: 50)", min=1)
    flow_batch_size: int = param(128, "flow batch size (official: 1024)", min=2)
    flow_lr: float = param(0.05, "flow learning rate (official: 0.2)", min=0)
    lambda_lh: float = param(2.0, "weight of the class-weighted likelihood", min=0)
    lambda_purity: float = param(0.02, "weight of the purity contrast", min=0)
    lambda_balance: float = param(1.0, "weight of the cluster-balance term", min=0)
    classifier_epochs: int = param(60, "stage classifier epochs (official: 150)", min=1)
    classifier_batch_size: int = param(64, "stage classifier batch size (official: 128)", min=1)
    classifier_lr: float = param(0.05, "stage classifier learning rate (official: 0.01 for CE/CBS features)", min=0)
    crt_epochs: int = param(10, "cRT baseline epochs", min=1)
    feature_folder: str = param("", "a folder of feature_{train,val,test}.h5 files (under $LTLIB_DATA if relative); "
                                "empty: the CIFAR backbones above")
    feature_dataset: str = param("imagenet-lt", "the data set the feature files describe (its many / few thresholds)")

    def check(self) -> None:
        super().check()
        if not 0 < self.proportion < 1:
            raise ParameterError(f"{self.NOTEBOOK}: proportion must lie in (0, 1), got {self.proportion}")

    def dlsa_options(self, depth: int, latent: bool) -> dict:
        from .label_space import ClassifierConfig, DLSAConfig, FlowConfig

        flow = FlowConfig(num_clusters=self.num_clusters, epochs=self.flow_epochs, batch_size=self.flow_batch_size,
                          lr=float(self.flow_lr), lambda_lh=float(self.lambda_lh),
                          lambda_purity=float(self.lambda_purity), lambda_balance=float(self.lambda_balance))
        classifier = ClassifierConfig(epochs=self.classifier_epochs, batch_size=self.classifier_batch_size,
                                      lr=float(self.classifier_lr))
        options = dataclasses.asdict(DLSAConfig(depth=depth, proportion=float(self.proportion), latent_input=latent,
                                             flow=flow, classifier=classifier))
        options.pop("seed")
        return options

    def feature_source(self):
        from .paths import data_root
        from .stages import FeatureSource

        folder = Path(self.feature_folder).expanduser()
        folder = folder if folder.is_absolute() else data_root() / folder
        return FeatureSource(str(folder), self.feature_dataset, cpu_threads=self.cpu_threads)

    def plan(self) -> list[Planned]:
        if self.feature_folder:  # features from files: DLSA and its Balanced-Softmax baseline, no backbone to train
            source = self.feature_source()
            source.key()  # an absent or empty folder fails here, naming it, before anything runs
            name = Path(source.folder).name
            return [Planned(StageSpec.make("dlsa", self.dlsa_options(depth, latent), source, seed, self.device),
                            f"{name} + bsm" if depth == 0 else f"{name} + dlsa{depth}{'' if latent else ', z=x'}", "dlsa",
                            (("backbone", name), ("depth", depth), ("latent", latent)))
                    for seed in self.dlsa_seeds for depth in [0, *self.depths]
                    for latent in ([True] if depth == 0 else [True, False])]
        backbones = self.grid(role="backbone")
        items = list(backbones)
        crt = {"trainable": "fc", "loss": "ce", "smooth_head": None, "smooth_tail": None, "epochs": self.crt_epochs,
               "batch_size": 128, "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0001, "samples_per_class": 4,
               "views": 1, "cpu_threads": 1}
        for backbone in backbones:
            for seed in self.dlsa_seeds:
                items.append(Planned(StageSpec.make("classifier", crt, backbone.spec, seed, self.device),
                                     f"{backbone.name} + crt", "dlsa", (("backbone", backbone.name), ("depth", None))))
                for depth in [0, *self.depths]:
                    for latent in ([True] if depth == 0 else [True, False]):
                        name = f"{backbone.name} + bsm" if depth == 0 else \
                            f"{backbone.name} + dlsa{depth}{'' if latent else ', z=x'}"
                        spec = StageSpec.make("dlsa", self.dlsa_options(depth, latent), backbone.spec, seed,
                                              self.device)
                        items.append(Planned(spec, name, "dlsa", (("backbone", backbone.name), ("depth", depth),
                                                                  ("latent", latent))))
        return items


@dataclasses.dataclass
class IntraInterNotebook(TrainingConfig):
    NOTEBOOK: ClassVar[str] = "05_intra_inter_balance"

    methods: list[str] = param(["ce", "cb", "ghm", "intra_inter", "intra_inter:inter=false",
                                "intra_inter:intra=false"], "methods compared")
    weight_variants: list[str] = param(["ghm", "intra_inter:inter=false", "intra_inter:intra=false", "intra_inter"],
                                       "losses whose weight sharing is drawn on the CE model's logits")

    def plan(self) -> list[Planned]:
        items = self.grid()
        for p in [p for p in items if p.name in ("ce", "intra_inter")]:
            items.append(Planned(StageSpec.make("gradient_norms", {"bins": 40}, p.spec, 0, self.device),
                                 p.name, "gradient_norms"))
        first = [p for p in items if p.role == "main" and p.name == "ce" and p.spec.seed == self.seeds[0]]
        variants = {"ce": None, **{v: v for v in self.weight_variants}}
        for p in first:
            items.append(Planned(StageSpec.make("weight_sharing", {"batch_size": 128, "points": 150,
                                                                   "variants": variants}, p.spec, 0, self.device),
                                 "ce", "weight_sharing"))
        return items


@dataclasses.dataclass
class SummaryNotebook(NotebookConfig):
    NOTEBOOK: ClassVar[str] = "06_summary"

    def plan(self) -> list[Planned]:
        return []


CONFIGS = (DataNotebook, BaselinesNotebook, CDBNotebook, DifficultyNetNotebook, DLSANotebook, IntraInterNotebook,
           SummaryNotebook)


# ------------------------------------------------------------------------------------------------ study

class Study:
    """A notebook's plan against the run store: what is there, what is missing, the records of what is there."""

    def __init__(self, config: NotebookConfig, store: RunStore | None = None):
        self.config = config
        self.store = store or RunStore(config.profile)
        self.items = config.plan()
        self._entries: dict[str, object] = {}
        self.computed: list[str] = []  # keys this process trained or computed (ensure)

    def missing(self) -> list[Planned]:
        return [p for p in self.items if p.key not in self.store]

    def method_items(self, entry: str) -> list[Planned]:
        """The plan's runs of the method ``entry`` (of ``config.methods``) and every stage built on them."""
        ref = self.config.method_ref(entry)
        return [p for p in self.items if trained_method(p.spec) == ref]

    def complete_methods(self) -> list[str]:
        """The entries of ``config.methods`` whose runs, and every stage built on them, are all in the store."""
        return [m for m in getattr(self.config, "methods", [])
                if all(p.key in self.store for p in self.method_items(m))]

    def ensure(self, workers: int | None = None, progress: bool = True) -> list[Planned]:
        """Train / compute what the store lacks (``workers`` processes; default the config's) and return it."""
        missing = self.missing()
        if missing:
            device = getattr(self.config, "device", "cpu")
            try:
                resolve_device(device)
            except DeviceError as error:
                raise DeviceError(f"{self.config.NOTEBOOK}: {len(missing)} run(s) are not in {self.store.folder} and "
                                  f"would be trained here, but: {error}") from None
            problem = emulated_bf16_problem(len(cpu_bf16_training(missing, self.store)))
            if problem:  # a warning, not a refusal: a notebook trains what its store lacks (the sweep refuses)
                warnings.warn(f"{self.config.NOTEBOOK}: {problem}", RuntimeWarning, stacklevel=2)
            self.computed += execute(missing, self.store, workers=workers or getattr(self.config, "workers", 1),
                                     progress=progress)
        return missing

    def get(self, item: Planned):
        from .experiment import run
        from .stages import run_stage

        if item.key not in self._entries:
            self._entries[item.key] = run_stage(item.spec, self.store, train=False) if item.is_stage \
                else run(item.spec, self.store, train=False)
        return self._entries[item.key]

    def select(self, role: str = "main", **where) -> list[Planned]:
        out = [p for p in self.items if p.role == role]
        for name, value in where.items():
            out = [p for p in out if (getattr(p, name) if hasattr(p, name) else p.info(name)) == value]
        return out

    def thresholds(self, spec) -> ShotThresholds:
        source = (spec.parent if isinstance(spec, StageSpec) else spec).data.source
        config = self.config
        return shot_thresholds(source, getattr(config, "many_above", None), getattr(config, "few_below", None))

    def records(self, role: str = "main", *, stored_only: bool = False, **where) -> list[dict]:
        """The records of ``role``'s entries; ``stored_only`` skips those the store lacks instead of failing."""
        out = []
        for item in self.select(role, **where):
            if stored_only and item.key not in self.store:
                continue
            entry = self.get(item)
            meta = {k: v for k, v in item.meta}
            out += [{**r, **meta, "role": role} for r in entry.records(name=item.name,
                                                                        thresholds=self.thresholds(item.spec))]
        return out

    def save_results(self, roles: tuple[str, ...] | None = None, extra: dict | None = None) -> Path:
        """``results/<profile>/<notebook>.json`` from the store: the records of the plan's runs, their keys."""
        from .stages import STAGES

        roles = roles or tuple(dict.fromkeys(p.role for p in self.items
                                             if not p.is_stage or STAGES[p.spec.kind].records))
        records = [r for role in roles for r in self.records(role)]
        runs = {}
        for item in self.items:
            entry = self.get(item).entry
            runs[item.key] = {"kind": entry["kind"], "spec": entry["spec"], "provenance": entry["provenance"]}
        path = results_dir(self.config.profile) / f"{self.config.NOTEBOOK}.json"
        payload = {"notebook": self.config.NOTEBOOK, "profile": self.config.profile, "config": self.config.as_dict(),
                   "store": f"runs/{self.config.profile}", "records": records, "runs": runs, **(extra or {})}
        with file_lock(cache_dir() / "locks" / f"results-{self.config.profile}-{self.config.NOTEBOOK}.lock"):
            write_json(path, payload)
        return path


def trained_method(spec) -> MethodRef | None:
    """The method of the training run at the root of ``spec`` (a run, or a stage on one); None for feature files."""
    while isinstance(spec, StageSpec):
        spec = spec.parent
    return getattr(spec, "method", None)


def config_class(notebook: str):
    """The configuration class of notebook ``NN_name``."""
    for cls in CONFIGS:
        if cls.NOTEBOOK == notebook:
            return cls
    raise ParameterError(f"no notebook {notebook!r}; the notebooks are {[c.NOTEBOOK for c in CONFIGS]}")


def study_for(notebook: str, profile: str, overrides: dict | None = None) -> Study:
    return Study(config_class(notebook).load(profile, overrides))


__all__ = ["RECIPES", "CONFIGS", "Planned", "Recipe", "Study", "study_for", "ROOT"]
