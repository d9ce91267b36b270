"""Repeating a run with another seed: its own run folder and random streams of its own."""

from utils.checkpoint import load_checkpoint
from utils.config import load_config

from .helpers import load_entry, train_args

train = load_entry("train")


def test_the_seed_names_the_run_folder_unless_it_is_the_default():
    assert load_config(None, ["exp_name=x"]).run_dir.as_posix() == "runs/x"
    assert load_config(None, ["exp_name=x", "train.seed=0"]).run_dir.as_posix() == "runs/x"
    assert load_config(None, ["exp_name=x", "train.seed=3"]).run_dir.as_posix() == "runs/x-seed3"


def test_runs_with_different_seeds_share_no_random_stream():
    epochs_or_ranks = range(1001)
    streams = [train.stream_seed(seed, i) for seed in range(4) for i in epochs_or_ranks]
    assert len(set(streams)) == len(streams)
    assert [train.stream_seed(0, i) for i in epochs_or_ranks] == list(epochs_or_ranks)
    saved = train.rng_state()
    train.seed_everything(train.stream_seed(5000, 3))  # beyond numpy's 32-bit seeds
    train.set_rng_state(saved)


def test_a_seed_repeat_trains_beside_the_default_run(data_root, trained):
    before = (trained / "last.pth").stat().st_mtime_ns
    args = train_args(data_root, trained.parent, "train.seed=1", "train.epochs=1")
    result = train.main(args)
    assert result["run_dir"] == str(trained.parent / "run-seed1")
    ckpt = load_checkpoint(trained.parent / "run-seed1" / "last.pth")
    assert ckpt["config"]["train"]["seed"] == 1
    assert (trained / "last.pth").stat().st_mtime_ns == before
