"""Planning a comparison's jobs: run keys, which runs are reused or re-scored, probes and scheduling."""

from __future__ import annotations

import pytest

from bljust.compare.budget import ABLATIONS
from bljust.compare.jobs import plan_jobs, training_settings
from bljust.config import load_config
from bljust.lm import PreparedLM
from tests.compare.conftest import COPIED, linked_corpus
from tests.conftest import TINY


def test_ablations_run_only_when_named_under_their_own_keys(tiny_corpus, tmp_path):
    from bljust.compare import comparison_methods

    assert not set(ABLATIONS) & set(comparison_methods(tiny_corpus, None))
    assert comparison_methods(tiny_corpus, ["bljust", "bljust-no-finetune"]) == ["bljust", "bljust-no-finetune"]

    def jobs(methods, *overrides):  # N2 from the streams: the ablations are planned on them too
        cfg = load_config(TINY, ["bljust.joint_steps=null", *overrides])
        return {j.method: j for j in plan_jobs(cfg, tiny_corpus, tmp_path, methods, [0], 40, "labeled")}

    every = jobs(["ptft", "bljust", *ABLATIONS])
    assert len({j.key for j in every.values()}) == len(every)
    for ablation, own in ABLATIONS.items():
        job = every[ablation]
        assert job.run_dir == tmp_path / "runs" / f"{ablation}-seed0" and job.settings[-len(own):] == list(own)
        alone = jobs([ablation])[ablation]  # without bljust beside it, still planned from the streams
        assert (alone.key, alone.settings) == (job.key, job.settings)
    retuned_ptft, retuned_bljust = jobs(list(every), "ptft.pretrain_fraction=0.3"), jobs(list(every), "bljust.rho=0.1")
    for ablation in ABLATIONS:
        assert retuned_ptft[ablation].key == every[ablation].key != retuned_bljust[ablation].key


# ------------------------------------------------------------------ run keys


def test_run_keys_hash_only_non_default_training_settings():
    assert training_settings(load_config(None, ["decode.lm_order=5", "decode.lm_weights=[9.0]"])) == {}
    assert training_settings(load_config(None, ["optim.lr=0.5", "data.speed_perturb=[0.9]"])) == {
        "optim": {"lr": 0.5}, "data": {"speed_perturb": [0.9]}}
    # a value set explicitly to its default is the same run as one that leaves it out
    assert training_settings(load_config(None, ["optim.lr=0.001"])) == {}
    # a method's key ignores the other methods' sections
    cfg = load_config(None, ["bljust.gamma_max=0.9", "ssl.loss=cpc", "optim.lr=0.5"])
    assert training_settings(cfg, "supervised") == training_settings(cfg, "pl") == {"optim": {"lr": 0.5}}
    assert training_settings(cfg, "just") == {"optim": {"lr": 0.5}, "ssl": {"loss": "cpc"}}
    assert training_settings(cfg, "bljust")["bljust"] == {"gamma_max": 0.9}


def test_retuning_one_method_keeps_the_other_methods_runs(tiny_corpus, tmp_path):
    def keys(*overrides, rule="passes"):
        cfg = load_config(TINY, list(overrides))
        return {j.method: j.key for j in plan_jobs(cfg, tiny_corpus, tmp_path, ["supervised", "ptft", "bljust"],
                                                   [0], 8, rule)}

    base, tuned = keys(), keys("bljust.gamma_max=0.9")
    assert tuned["supervised"] == base["supervised"] and tuned["ptft"] == base["ptft"]
    assert tuned["bljust"] != base["bljust"]
    assert keys("ssl.mask_span=5")["supervised"] == base["supervised"] != keys("optim.lr=0.5")["supervised"]
    # the budget rule is part of every key, even where the settings are the same under both
    assert keys(rule="labeled")["supervised"] != base["supervised"]


def test_pl_with_lm_pseudo_labels_gets_the_lm_and_its_hash_in_the_key(tiny_corpus, tmp_path):
    lm = PreparedLM(str(tmp_path / "2gram.arpa"), "aaaa", "dk")
    other_lm = PreparedLM(lm.path, "bbbb", "dk2")  # the same file name, other contents

    def jobs(lm_, *overrides):
        cfg = load_config(TINY, ["pl.decode=lm", *overrides])
        return {j.method: j for j in plan_jobs(cfg, tiny_corpus, tmp_path, ["supervised", "pl"], [0], 4, "passes",
                                               lm_)}

    base = jobs(lm)
    assert base["pl"].settings == ["train.seed=0", "train.max_steps=4", f"decode.lm={lm.path}"]
    assert base["supervised"].settings == ["train.seed=0", "train.max_steps=4"]
    changed = jobs(other_lm)
    assert changed["pl"].key != base["pl"].key and changed["supervised"].key == base["supervised"].key
    assert changed["pl"].decode_key == "dk2"
    # PL's pseudo-labels depend on the decoding grid it tunes on dev; the others' training does not
    grid = jobs(lm, "decode.lm_weights=[1.0]")
    assert grid["pl"].key != base["pl"].key and grid["supervised"].key == base["supervised"].key
    # greedy pseudo-labels: the LM and the decode section stay out of PL's key and settings
    greedy = {j.method: j for j in plan_jobs(load_config(TINY), tiny_corpus, tmp_path, ["pl"], [0], 4, "passes", lm)}
    assert greedy["pl"].settings == ["train.seed=0", "train.max_steps=4"]
    greedy_other = plan_jobs(load_config(TINY), tiny_corpus, tmp_path, ["pl"], [0], 4, "passes", other_lm)
    assert greedy_other[0].key == greedy["pl"].key
    with pytest.raises(ValueError, match="pl.decode=lm needs a word LM"):
        jobs(PreparedLM())


def test_pl_with_lm_uses_the_corpus_lm(tiny_corpus, tmp_path):
    from bljust.lm import prepare_lm

    cfg = load_config(TINY, ["pl.decode=lm"])
    lm = prepare_lm(cfg.decode, tiny_corpus, tmp_path)
    assert lm.path == str((tmp_path / "lm" / "2gram.arpa").resolve()) and len(lm.sha256) == 16
    (job,) = plan_jobs(cfg, tiny_corpus, tmp_path, ["pl"], [0], 4, "labeled", lm)
    job_cfg = load_config(TINY, ["pl.decode=lm", *job.settings])
    assert job_cfg.decode.lm == lm.path and job_cfg.pl.decode == "lm"


# ------------------------------------------------------------------ scheduling


def test_the_last_wave_of_cpu_jobs_shares_the_cores_instead_of_leaving_one_idle():
    from bljust.compare.jobs import cpu_threads, may_start

    def waves(jobs: int, parallel: int, on_gpu: bool = False) -> list[int]:
        """Jobs running after each start-up round, when the running jobs end one at a time."""
        running, waiting, out = 0, jobs, []
        while waiting or running:
            while may_start(running, waiting, parallel, on_gpu):
                running, waiting = running + 1, waiting - 1
            out.append(running)
            running -= 1
        return out

    # The demo: 5 jobs on 2 cores. Two run; when one ends, one more starts; when three are left,
    # they all run at once instead of the fifth running alone on a core.
    assert waves(5, 2) == [2, 2, 3, 2, 1]
    assert waves(15, 2).count(3) == 1 and max(waves(15, 2)) == 3
    assert waves(7, 4)[:2] == [4, 6]
    assert max(waves(5, 2, on_gpu=True)) == 2  # one job per GPU, always
    assert max(waves(3, 1)) == 1
    # Every job of a wave runs on one thread; only a job alone on a machine gets all the cores.
    assert cpu_threads(2, 2, 3) == 1 and cpu_threads(2, 2, 1) == 2


def test_a_corpus_that_gains_a_scored_split_rescores_its_runs_without_retraining(tiny_corpus, tmp_path):
    from bljust.compare.jobs import eval_splits
    from bljust.data.manifests import load_split, write_split

    def plan():
        return plan_jobs(load_config(TINY), data, tmp_path, ["supervised", "topline"], [0], 4)

    data = linked_corpus(tiny_corpus, tmp_path / "data", optional=False)
    before = plan()
    decode_keys = {tuple(j.decode_key for j in before)}
    for split, source in COPIED.items():  # each split gained changes the decode keys, never the training keys
        write_split(data, split, *load_split(tiny_corpus, source).decompose()[:2])
        after = plan()
        assert [j.key for j in after] == [j.key for j in before]
        decode_keys.add(tuple(j.decode_key for j in after))
    assert len(decode_keys) == 1 + len(COPIED)
    assert eval_splits(data) == ("dev", "test", *COPIED)  # dev first: the LM's weight is chosen there alone
    assert before[0].key != before[1].key  # the topline is another training, under the same budget
    assert before[1].settings == before[0].settings + ['data.labeled_splits=["labeled", "unlabeled_text"]']


def test_probe_jobs_follow_their_runs_keys(tiny_corpus, tmp_path):
    from bljust.compare.jobs import plan_probes, write_json

    def planned(*overrides):
        jobs = plan_jobs(load_config(TINY, list(overrides)), tiny_corpus, tmp_path, ["topline", "ptft", "supervised"],
                         [0], 4)
        for j in jobs[1:]:  # the topline never finished
            j.run_dir.mkdir(parents=True, exist_ok=True)
            write_json(j.record_path, {"key": j.key, "decode_key": j.decode_key})
        return {p.method: p for p in plan_probes(jobs, tmp_path)}

    probes = planned()
    assert set(probes) == {"ptft", "supervised", "random-init"}
    assert probes["random-init"].source == tmp_path / "runs" / "supervised-seed0" and probes["random-init"].probe[
        "random_init"]
    assert probes["ptft"].source == tmp_path / "runs" / "ptft-seed0" and probes["ptft"].kind == "probe"
    assert len({p.key for p in probes.values()}) == 3
    retuned = planned("ptft.pretrain_fraction=0.3")  # PT+FT retrained: its probe is redone, the others are kept
    assert retuned["ptft"].key != probes["ptft"].key and retuned["supervised"].key == probes["supervised"].key
    assert retuned["random-init"].key == probes["random-init"].key
