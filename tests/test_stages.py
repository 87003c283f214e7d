"""Post-hoc stages as store entries: keyed by their parent, computed on the trained model, retrained if need be."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from ltlib.executor import Planned
from ltlib.experiment import DataSpec, RunSpec, checkpoint_path, run
from ltlib.label_space import DLSAConfig, head_tail_separation, separation_from_summary
from ltlib.methods import MethodRef
from ltlib.stages import Backbone, StageSpec, pairwise_more_likely, run_stage, stage_options
from ltlib.store import RunStore
from ltlib.train import TrainConfig
from ltlib.two_stage import Stage2Config
from ltlib.views import weights_note


def parent(seed: int = 0) -> RunSpec:
    config = TrainConfig(epochs=2, batch_size=64, lr=0.05, milestones=(), warmup_epochs=0)
    return RunSpec(DataSpec("digits", 10.0, "cdb"), "small_cnn", MethodRef.parse("ce"), config, seed)


def classifier_stage(seed: int = 0, **options) -> StageSpec:
    return StageSpec.make("classifier", stage_options(Stage2Config(epochs=3, batch_size=64, **options)), parent(), seed)


@pytest.fixture
def store(tmp_path) -> RunStore:
    return RunStore("quick", tmp_path / "runs")


def test_a_stage_is_keyed_by_its_options_seed_and_parent():
    base = classifier_stage()
    assert base.key() == classifier_stage().key()
    assert len({base.key(), classifier_stage(seed=1).key(), classifier_stage(lr=0.01).key(),
                StageSpec.make("classifier", dict(base.options), parent(seed=1)).key()}) == 4
    assert base.identity()["parent"] == parent().key()


def test_stage_records_are_read_back_and_name_their_parent(store):
    first = run_stage(classifier_stage(), store)
    assert first.trained_now
    records = first.records("ce + las_lws")
    assert {r["selected_on"] for r in records} == {"val", "last", "test"}
    assert all(r["stage1_run_key"] == parent().key() and r["run_key"] == first.key for r in records)
    test_selected = next(r for r in records if r["selected_on"] == "test")
    assert test_selected["top1"] >= max(r["top1"] for r in records) - 1e-9  # peeking picks the best test epoch
    again = run_stage(classifier_stage(), store)
    assert not again.trained_now and again.entry == first.entry


def test_a_stage_without_its_backbone_weights_retrains_the_backbone_to_the_same_numbers(store, tmp_path):
    reference = run_stage(classifier_stage(), RunStore("quick", tmp_path / "reference")).result
    run(parent(), store, progress=False)
    shutil.rmtree(checkpoint_path(parent().key()).parent)  # a fresh machine: the store entry, no weights
    fresh = run_stage(classifier_stage(), store)
    assert fresh.result["confusion"] == reference["confusion"]
    assert fresh.result["history"] == reference["history"]
    assert fresh.result["backbone_weights"]["retrained"] and fresh.result["backbone_weights"]["same_as_entry"]


def test_a_stage_on_weights_that_are_not_the_stored_runs_says_so(store):
    """A backbone retrained elsewhere (another CPU's bf16 kernels) ends with other weights than its store entry:
    the stage warns and records it, so a notebook does not pass it off as a stage of the stored run."""
    run(parent(), store, progress=False)
    run(parent(seed=1), store, progress=False)
    stored_last = store.get(parent().key())["result"]["history"][-1]["test_top1"]
    shutil.copy(checkpoint_path(parent(seed=1).key()), checkpoint_path(parent().key()))  # other weights, same key
    with pytest.warns(RuntimeWarning, match="not its store entry"):
        stage = run_stage(classifier_stage(), store)
    origin = stage.result["backbone_weights"]
    assert origin["same_as_entry"] is False and origin["retrained"] is False
    assert origin["entry_last_test_top1"] == stored_last
    assert origin["last_test_top1"] == store.get(parent(seed=1).key())["result"]["history"][-1]["test_top1"]
    cached = run_stage(StageSpec.make("classifier", dict(classifier_stage().options), parent(), seed=1), store)
    assert cached.result["backbone_weights"]["same_as_entry"] is False  # features from the cache: still checked

    class OneStage:  # the part of a Study the sentence reads
        def __init__(self, spec):
            self.store, self.item = store, Planned(spec, "ce + crt", "dlsa", (("backbone", "ce"),))

        def select(self, role):
            return [self.item]

        def get(self, item):
            return run_stage(item.spec, store)

    note = weights_note(OneStage(classifier_stage()), "dlsa")
    assert f"ce seed 0 (cached weights {origin['last_test_top1']:.2f}" in note and f"stored run {stored_last:.2f}" in note


def test_features_are_cached_and_reproduce_the_model(store):
    run(parent(), store, progress=False)
    backbone = Backbone(parent(), store)
    features = backbone.features(views=2, seed=0)
    n = len(features.clean_train()[1])
    assert features.views == 2 and features.train.shape[0] == 2 * n
    assert not torch.equal(features.train[:n], features.train[n:])  # view 1 is augmented
    assert torch.equal(Backbone(parent(), store).features(views=2, seed=0).train, features.train)
    model = backbone.model()
    from ltlib.data import DeviceBatches

    data = backbone.data
    with torch.no_grad():
        logits = model(DeviceBatches(data.test, data.mean, data.std, "cpu")._normalise(data.test.images[:5]))
        assert torch.allclose(model.classifier(features.test[:5]), logits, atol=1e-5)


def test_the_stored_class_pair_ranks_give_the_exact_separation():
    generator = np.random.default_rng(0)
    labels = np.repeat(np.arange(5), [60, 40, 30, 15, 5])
    values = generator.normal(size=len(labels)) + 0.4 * (4 - labels)
    groups = {"many": [0, 1], "medium": [2], "few": [3, 4]}
    exact = head_tail_separation(values, labels, groups, proportion=0.3)
    pairwise = pairwise_more_likely(torch.as_tensor(values), torch.as_tensor(labels), 5)
    threshold = np.sort(values)[int(len(values) * 0.7)]
    taken = np.bincount(labels[values >= threshold], minlength=5)
    summary = separation_from_summary(pairwise, np.bincount(labels), taken, groups)
    for name, value in exact.items():
        assert summary[name] == pytest.approx(value, abs=1e-6), name


def test_a_dlsa_stage_stores_histograms_not_samples(store):
    from ltlib.label_space import ClassifierConfig, FlowConfig

    options = stage_options(DLSAConfig(depth=1, flow=FlowConfig(num_clusters=5, epochs=2, batch_size=64),
                                       classifier=ClassifierConfig(epochs=2, batch_size=64)))
    out = run_stage(StageSpec.make("dlsa", options, parent(), 0), store)
    stage = out.result["stages"][0]
    assert set(out.result["confusion"]) == {"val"} and "llh" not in stage
    assert np.asarray(stage["llh_histogram"]["test"]).sum() == 400
    assert sum(stage["class_sizes"]["test"]) == 400 and len(stage["llh_pairwise"]["train"]) == 10
    assert sum(sum(s["test_classes"]) for s in out.result["stages"]) == 400


def test_an_unknown_stage_is_named():
    with pytest.raises(ValueError, match="unknown stage 'bogus'"):
        StageSpec.make("bogus", {}, parent()).key()


def test_dlsa_on_feature_files_needs_no_backbone(tmp_path):
    """The paper profile's ImageNet-LT route: features from files, DLSA and its baseline as stages of the files."""
    import h5py

    from ltlib.studies import DLSANotebook, Study

    folder = tmp_path / "features" / "imagenet-lt-ce-r50"
    folder.mkdir(parents=True)
    generator = np.random.default_rng(0)
    for split, per_class in (("train", [80, 40, 20, 10, 5]), ("val", [4] * 5), ("test", [10] * 5)):
        labels = np.repeat(np.arange(5), per_class)
        with h5py.File(folder / f"feature_{split}.h5", "w") as handle:
            handle["features"] = (generator.normal(size=(len(labels), 8)) + labels[:, None]).astype(np.float32)
            handle["labels"] = labels
    config = DLSANotebook.load("quick", {"feature_folder": str(folder), "depths": [1], "dlsa_seeds": [0],
                                         "num_clusters": 5, "flow_epochs": 2, "classifier_epochs": 2})
    study = Study(config, RunStore("quick", tmp_path / "runs"))
    assert all(p.is_stage for p in study.items)
    study.ensure(progress=False)
    records = study.records("dlsa")
    assert {r["method"] for r in records} == {"imagenet-lt-ce-r50 + bsm", "imagenet-lt-ce-r50 + dlsa1",
                                              "imagenet-lt-ce-r50 + dlsa1, z=x"}
    assert {r["dataset"] for r in records} == {"imagenet-lt"} and all(0 <= r["top1"] <= 100 for r in records)
    with pytest.raises(FileNotFoundError, match="no feature_"):
        DLSANotebook.load("quick", {"feature_folder": str(tmp_path / "absent")}).plan()
