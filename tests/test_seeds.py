"""Repeating a run with another seed: its own run folder and random streams of its own."""

import training_run
from utils.config import load_config


def test_the_seed_names_the_run_folder_unless_it_is_the_default():
    assert load_config(None, ["exp_name=x"]).run_dir.as_posix() == "runs/x"
    assert load_config(None, ["exp_name=x", "train.seed=0"]).run_dir.as_posix() == "runs/x"
    assert load_config(None, ["exp_name=x", "train.seed=3"]).run_dir.as_posix() == "runs/x-seed3"


def test_runs_with_different_seeds_share_no_random_stream():
    epochs_or_ranks = range(1001)
    streams = [training_run.stream_seed(seed, i) for seed in range(4) for i in epochs_or_ranks]
    assert len(set(streams)) == len(streams)
    assert [training_run.stream_seed(0, i) for i in epochs_or_ranks] == list(epochs_or_ranks)
    saved = training_run.rng_state()
    training_run.seed_everything(training_run.stream_seed(5000, 3))  # beyond numpy's 32-bit seeds
    training_run.set_rng_state(saved)
