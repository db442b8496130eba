"""The detail refiner: the network, its slab-wise run, its place in a model folder and the Translator, and the
`mrtranslate train refiner` stage that learns it from an evaluate report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from _training_utils import checkpoint_differences, write_json, write_subjects
from _translate_utils import arr, assert_same_geometry, write_head
from _tiny import save_tiny

from mrtranslate import Translator
from mrtranslate.cli import main
from mrtranslate.errors import ModelFormatError
from mrtranslate.evaluation.evaluate import evaluate
from mrtranslate.models.refiner import Refiner, RefinerConfig
from mrtranslate.pipeline import ALDMPipeline
from mrtranslate.pipeline.folder import save_refiner
from mrtranslate.pipeline.guided import guided_transfer
from mrtranslate.pipeline.refine import refine, scaled_source
from mrtranslate.training.config import RefinerTrainConfig
from mrtranslate.training.refiner import RefinerStage, RefinerData, ssim_map, gaussian_window
from mrtranslate.training.distributed import setup as dist_setup

SPACING = 4.0


def _random_refiner(max_spacing: float = 4.0, seed: int = 0) -> Refiner:
    torch.manual_seed(seed)
    net = Refiner(RefinerConfig(channels=4, dilations=(1, 2), max_input_spacing_mm=max_spacing))
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return net


def test_an_untrained_refiner_returns_the_output_and_zero_stays_zero() -> None:
    source = torch.rand(12, 10, 9) * 100
    output = torch.rand(12, 10, 9)
    output[:3] = 0
    same = refine(Refiner(RefinerConfig(channels=4, dilations=(1,))), source, output, 0, 2)
    assert torch.equal(same, output)
    changed = refine(_random_refiner(), source, output, 0, 2)
    assert not torch.allclose(changed, output)
    assert torch.all(changed[:3] == 0) and torch.all(changed >= 0)


def test_slab_by_slab_equals_one_pass_over_the_foreground_box() -> None:
    torch.manual_seed(1)
    net = _random_refiner()
    source = torch.rand(40, 14, 12) * 50
    output = torch.rand(40, 14, 12)
    output[:4], output[-2:] = 0, 0
    whole = refine(net, source, output, 1, 3, slab=1000)
    for slab in (1, 5, 16):
        assert torch.allclose(refine(net, source, output, 1, 3, slab=slab), whole, atol=1e-5)
    # and one pass over the foreground box equals the network on the whole volume there
    ref = net(scaled_source(source)[None, None], output[None, None], torch.tensor([1]), torch.tensor([3]))[0, 0]
    inside = output > 0
    assert torch.allclose(whole[inside], ref.clamp_min(0)[inside], atol=1e-5)


def test_the_source_is_scaled_as_the_metrics_scale_images() -> None:
    values = torch.linspace(1, 200, 1000).reshape(10, 10, 10)
    values[0] = 0
    s = scaled_source(values)
    brain = values[values > 0].numpy()
    lo, hi = np.percentile(brain, (0.5, 99.5))
    want = np.clip((values.numpy() - lo) / (hi - lo), 0, 1.5) * (values.numpy() > 0)
    np.testing.assert_allclose(s.numpy(), want, atol=1e-6)


def test_the_training_ssim_equals_the_metrics_ssim_where_the_window_fits() -> None:
    from mrtranslate.evaluation.metrics import ssim_map as metrics_ssim

    rng = np.random.default_rng(0)
    a = rng.random((20, 18, 16)).astype(np.float32)
    b = np.clip(a + rng.normal(0, 0.2, a.shape), 0, 1).astype(np.float32)
    mine = ssim_map(torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None], gaussian_window())[0, 0]
    theirs = metrics_ssim(a, b)
    np.testing.assert_allclose(mine.numpy(), theirs[5:-5, 5:-5, 5:-5], atol=1e-4)


def _refined_model(folder: Path, max_spacing: float, grid=(16, 24, 16), spacing=(4.0, 4.0, 4.0),
                   targets: tuple[str, ...] = (), **guide) -> Path:
    save_tiny(folder, grid=grid, spacing=spacing)
    net = _random_refiner(max_spacing)
    net.config.targets = targets
    for k, v in guide.items():
        setattr(net.config, k, v)
    save_refiner(net, folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["components"] = [*index["components"], "refiner"]
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


def test_a_model_folder_round_trips_its_refiner_and_older_readers_are_told_to_upgrade(tmp_path: Path) -> None:
    folder = _refined_model(tmp_path / "m", 4.0)
    pipe = ALDMPipeline.from_pretrained(folder)
    assert pipe.refiner is not None and pipe.config.has_refiner
    again = pipe.save_pretrained(tmp_path / "again")
    index = json.loads((again / "model_index.json").read_text())
    assert index["_format_version"] == 3 and "refiner" in index["components"]
    back = ALDMPipeline.from_pretrained(again)
    for k, v in pipe.refiner.state_dict().items():
        assert torch.equal(v, back.refiner.state_dict()[k])
    # a folder that lists a refiner without its files, or with the wrong class count, is refused in one line
    (again / "refiner" / "model.safetensors").unlink(missing_ok=True)
    with pytest.raises(ModelFormatError, match="missing"):
        ALDMPipeline.from_pretrained(again)
    cfg = json.loads((folder / "refiner" / "config.json").read_text())
    (folder / "refiner" / "config.json").write_text(json.dumps({**cfg, "num_classes": 3}))
    with pytest.raises(ModelFormatError, match="classes"):
        ALDMPipeline.from_pretrained(folder)


def test_the_translator_refines_inputs_fine_enough_and_leaves_coarser_ones(tmp_path: Path) -> None:
    plain = save_tiny(tmp_path / "plain", grid=(16, 24, 16), spacing=(4.0, 4.0, 4.0))
    refined = _refined_model(tmp_path / "refined", 3.0)
    fine = write_head(tmp_path / "fine" / "sub_t1.nii.gz", shape=(30, 40, 26), zooms=(2.5, 2.5, 2.5))
    coarse = write_head(tmp_path / "coarse" / "sub_t1.nii.gz", shape=(20, 26, 18), zooms=(4.0, 4.0, 4.0))
    a, b = Translator.from_pretrained(plain, progress=False), Translator.from_pretrained(refined, progress=False)
    out_a, out_b = a(coarse).to("t2"), b(coarse).to("t2")
    assert np.array_equal(arr(out_a), arr(out_b)) and b(coarse).refined_targets(["t2", "flair"]) == []
    bound = b(fine)
    assert bound.refined_targets(["t2", "flair"]) == ["t2", "flair"]
    assert bound.run_record(["t2"])["detail_refiner"] == ["t2"]
    fine_a, fine_b = a(fine).to("t2", "flair"), bound.to("t2", "flair")
    for t in ("t2", "flair"):
        assert_same_geometry(fine_b[t], fine_a[t])
        x, y = arr(fine_a[t]), arr(fine_b[t])
        assert not np.allclose(x, y) and np.all(y[x == 0] == 0) and np.all(y >= 0)
    assert "detail_refiner" not in a(fine).run_record(["t2"])
    # uncertainty: the spread of the refined draws, on the same grid
    outs, sd = bound.to("t2", samples=2, uncertainty="samples")
    assert np.array_equal(arr(outs), arr(bound.to("t2", samples=2)))
    assert_same_geometry(sd, fine_b["t2"])
    outside = arr(nib.load(str(fine))) == 0
    assert np.all(arr(sd)[outside] == 0) and np.all(arr(outs)[outside] == 0) and arr(sd).max() > 0


def test_a_refiner_with_targets_refines_those_alone(tmp_path: Path) -> None:
    plain = Translator.from_pretrained(save_tiny(tmp_path / "plain", grid=(16, 24, 16), spacing=(4.0, 4.0, 4.0)),
                                       progress=False)
    some = Translator.from_pretrained(_refined_model(tmp_path / "some", 3.0, targets=("flair",)), progress=False)
    fine = write_head(tmp_path / "fine" / "sub_t1.nii.gz", shape=(30, 40, 26), zooms=(2.5, 2.5, 2.5))
    a, b = plain(fine).to("t2", "flair"), some(fine).to("t2", "flair")
    assert np.array_equal(arr(a["t2"]), arr(b["t2"])) and not np.allclose(arr(a["flair"]), arr(b["flair"]))
    assert some(fine).run_record(["t2", "flair"])["detail_refiner"] == ["flair"]
    assert "detail_refiner" not in some(fine).run_record(["t2"])
    # a target that is not a modality of the model is a format error of the folder
    cfg = json.loads((tmp_path / "some" / "refiner" / "config.json").read_text())
    (tmp_path / "some" / "refiner" / "config.json").write_text(json.dumps({**cfg, "targets": ["pd"]}))
    with pytest.raises(ModelFormatError, match="targets"):
        ALDMPipeline.from_pretrained(tmp_path / "some")


def test_refine_runs_the_guided_transfer_after_the_network_for_the_targets_it_names() -> None:
    net = _random_refiner()
    net.config.targets = ("flair",)
    net.config.guide_sigma_mm, net.config.guide_eps, net.config.guide_targets = 6.0, 0.01, ("t2", "flair")
    torch.manual_seed(3)
    source = torch.rand(20, 18, 16) * 50
    output = torch.rand(20, 18, 16) + 0.1
    output[:3] = 0
    spacing = (3.0, 2.0, 4.0)
    t2 = refine(net, source, output, 0, 2, spacing=spacing, target="t2")
    guided = guided_transfer(scaled_source(source), output, 6.0, 0.01, spacing)
    assert torch.allclose(t2, guided, atol=1e-5)
    network = refine(net, source, output, 0, 3)  # no target: the network alone, as before the transfer existed
    assert torch.allclose(refine(net, source, output, 0, 3, spacing=spacing, target="flair"),
                          guided_transfer(scaled_source(source), network, 6.0, 0.01, spacing), atol=1e-5)
    assert torch.equal(refine(net, source, output, 0, 1, spacing=spacing, target="t1ce"), output)
    with pytest.raises(ValueError, match="spacings"):
        refine(net, source, output, 0, 2, target="t2")


def test_a_refiner_config_with_the_transfer_needs_a_version_that_runs_it() -> None:
    plain = RefinerConfig(targets=("t1",))
    assert plain.to_dict()["_format_version"] == 1 and not plain.guides("t1") and plain.refines("t1")
    guided = RefinerConfig(targets=("t1",), guide_sigma_mm=1.5, guide_targets=("t2",))
    d = guided.to_dict()
    assert d["_format_version"] == 2 and d["guide_targets"] == ["t2"]
    back = RefinerConfig.from_dict({**d, "guide_targets": ["T2"]})  # names are canonicalised
    assert back == guided and back.refines("t2") and back.guides("t2") and not back.net_refines("t2")
    assert not back.refines("flair")
    with pytest.raises(ModelFormatError, match="newer"):
        RefinerConfig.from_dict({**d, "_format_version": 3})
    with pytest.raises(ModelFormatError, match="guide_sigma_mm"):
        RefinerConfig.from_dict({**d, "guide_sigma_mm": -1})
    with pytest.raises(ModelFormatError, match="guide_targets"):
        RefinerConfig.from_dict({**d, "guide_targets": ["pd"]})


def test_the_translator_runs_the_transfer_on_its_targets_and_names_them(tmp_path: Path, capsys) -> None:
    plain = Translator.from_pretrained(save_tiny(tmp_path / "plain", grid=(16, 24, 16), spacing=(4.0, 4.0, 4.0)),
                                       progress=False)
    folder = _refined_model(tmp_path / "guided", 3.0, targets=("flair",), guide_sigma_mm=5.0, guide_targets=("t2",))
    guided = Translator.from_pretrained(folder, progress=False)
    fine = write_head(tmp_path / "fine" / "sub_t1.nii.gz", shape=(30, 40, 26), zooms=(2.5, 2.5, 2.5))
    a, b = plain(fine).to("t2", "flair", "t1ce"), guided(fine).to("t2", "flair", "t1ce")
    assert np.array_equal(arr(a["t1ce"]), arr(b["t1ce"]))
    for t in ("t2", "flair"):
        assert_same_geometry(b[t], a[t])
        assert not np.allclose(arr(a[t]), arr(b[t])) and np.all(arr(b[t])[arr(a[t]) == 0] == 0)
    assert guided(fine).run_record(["t2", "flair", "t1ce"])["detail_refiner"] == ["t2", "flair"]
    assert main(["info", str(folder), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)["detail_refiner"]
    assert info == {"targets": ["t2", "flair"], "max_input_spacing_mm": 3.0, "network_targets": ["flair"],
                    "guided_transfer": {"sigma_mm": 5.0, "eps": 0.003, "targets": ["t2"]}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model at 4 mm, its evaluate report on two synthetic 4 mm subjects, and a refiner config for 4 mm."""
    root = tmp_path_factory.mktemp("refiner")
    write_subjects(root / "train", 2, spacing=SPACING)
    model = save_tiny(root / "model", grid=(16, 16, 16), spacing=(SPACING,) * 3)
    evaluate(root / "train", model, "all", None, ["aldm"], root / "report", progress=False, figures=False)
    config = write_json(root / "refiner.json", {"batch_size": 2, "crop": [16, 16, 16], "log_every": 1,
                                                "model": {"channels": 4, "dilations": [1, 2],
                                                          "max_input_spacing_mm": SPACING}})
    return root, model, config


def _args(root: Path, model: Path, config: Path, run: Path, *extra: str) -> list[str]:
    return ["train", "refiner", "--model", str(model), "--report", str(root / "report"), "--data",
            str(root / "train"), "--config", str(config), "--run", str(run), "--quiet", *extra]


def test_train_refiner_learns_from_the_report_resumes_exactly_and_installs_into_the_model(trained, tmp_path, capsys):
    root, model, config = trained
    folder = tmp_path / "model"
    shutil.copytree(model, folder)
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(_args(root, folder, config, straight, "--steps", "4")) == 0
    index = json.loads((folder / "model_index.json").read_text())
    assert "refiner" in index["components"] and index["_format_version"] == 3
    pipe = ALDMPipeline.from_pretrained(folder)
    assert pipe.refiner.config.max_input_spacing_mm == SPACING
    # a second refiner on a model that has one is refused: its report would be of the refined outputs
    assert main(_args(root, folder, config, tmp_path / "again", "--steps", "1")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "has a refiner already" in err
    # 2 steps, then a resume to 4, equal 4 in one go
    other = tmp_path / "model2"
    shutil.copytree(model, other)
    assert main(_args(root, other, config, split, "--steps", "2")) == 0
    shutil.rmtree(other / "refiner")
    shutil.copy(model / "model_index.json", other / "model_index.json")
    assert main(["train", "refiner", "--run", str(split), "--resume", "--steps", "4", "--quiet"]) == 0
    assert checkpoint_differences(straight, split) == []
    rows = (straight / "metrics.csv").read_text().splitlines()
    assert rows[0].split(",")[:5] == ["step", "elapsed_s", "loss", "l1", "ssim"] and len(rows) == 5


def test_train_refiner_refuses_a_report_of_another_model_in_one_line(trained, tmp_path, capsys):
    root, model, config = trained
    other = save_tiny(tmp_path / "other", seed=3, grid=(16, 16, 16), spacing=(SPACING,) * 3)
    assert main(_args(root, other, config, tmp_path / "run", "--steps", "1")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "another model" in err
    assert not (other / "refiner").exists()
    assert main(["train", "refiner", "--run", str(tmp_path / "run2"), "--quiet"]) == 2
    assert "--model" in capsys.readouterr().err


def test_train_refiner_needs_fine_grid_subjects(trained, tmp_path, capsys):
    root, model, _ = trained
    coarse = write_json(tmp_path / "c.json", {"batch_size": 2, "crop": [16, 16, 16],
                                               "model": {"channels": 4, "dilations": [1], "max_input_spacing_mm": 1.0}})
    assert main(_args(root, model, coarse, tmp_path / "run", "--steps", "1")) == 2
    assert "of at most 1.0 mm" in capsys.readouterr().err


def test_a_few_steps_on_one_batch_lower_the_loss(trained) -> None:
    """The stage's gradient reaches the network: repeated steps on one batch lower its loss."""
    from mrtranslate.pipeline.config import PipelineConfig
    from mrtranslate.training.refiner import load_refiner_data

    root, model, _ = trained
    cfg = RefinerTrainConfig(batch_size=2, crop=[16, 16, 16], lr=3e-3, warmup_steps=0, lr_schedule="constant",
                             model=RefinerConfig(channels=8, dilations=(1, 2), max_input_spacing_mm=SPACING).to_dict())
    data = load_refiner_data(model, root / "report", root / "train", cfg.refiner_config(), progress=False)
    assert isinstance(data, RefinerData) and len(data.items) == 2 * 12
    stage = RefinerStage(cfg, dist_setup("cpu"), data, PipelineConfig().modalities)
    batch = stage.batch(0)
    first = float(stage.train_step(batch, 0)["loss"])
    for step in range(1, 40):
        last = float(stage.train_step(batch, step)["loss"])
    assert last < first - 0.01


def test_info_names_the_refiner_and_where_it_runs(tmp_path: Path, capsys) -> None:
    folder = _refined_model(tmp_path / "m", 1.2, targets=("t1ce",))
    assert main(["info", str(folder), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["components"][-1] == "refiner"
    assert info["detail_refiner"] == {"targets": ["t1ce"], "max_input_spacing_mm": 1.2}
    assert main(["info", str(save_tiny(tmp_path / "plain")), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["detail_refiner"] is None


def test_the_bundled_default_refines_what_its_recipe_configures() -> None:
    """The bundled brats-2mm holds the refiner its recipe trains: the network, where it runs, the targets chosen
    on the validation subjects and the guided transfer's settings, as `recipes/brats-2mm/refiner.json` sets them."""
    from mrtranslate import hub

    folder = hub.BUNDLED_DIR / "brats-2mm"
    recipe = json.loads((Path(__file__).resolve().parents[1] / "recipes" / "brats-2mm" / "refiner.json").read_text())
    bundled = json.loads((folder / "refiner" / "config.json").read_text())
    assert {k: bundled[k] for k in recipe["model"]} == recipe["model"]
    assert "refiner" in json.loads((folder / "model_index.json").read_text())["components"]
    pipe = ALDMPipeline.from_pretrained(folder)
    config = pipe.refiner.config
    assert config.net_refines("t1ce") and not config.net_refines("flair")
    assert all(config.guides(m) for m in pipe.modalities) and config.guide_sigma_mm > 0
    assert pipe.refines((1.0, 1.0, 1.0), "flair") and not pipe.refines((2.0, 2.0, 2.0), "t1ce")
