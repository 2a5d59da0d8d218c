"""What each stage's fingerprint lists (hypermeta.sources): derived from the import graph,
so that an edit reruns exactly the stages that run the edited file."""

import json
import shutil

from conftest import ROOT

from hypermeta.methods import METHODS
from hypermeta.sources import FOLDER, closure, stage_roots, write_fingerprints


def files_of(stage, method=None):
    return set(closure(stage_roots(stage, method), ROOT))


def test_a_methods_training_runs_its_own_file_and_neither_other_methods_nor_plots():
    train = files_of("train", "protonet")
    assert {"pipeline/train.py", "src/hypermeta/methods/protonet.py"} <= train
    assert {"src/hypermeta/engine/fewshot.py", "src/hypermeta/stages.py"} <= train
    for other in ("methods/maml.py", "methods/cnn.py", "report.py", "viz.py", "plots/fewshot.py"):
        assert f"src/hypermeta/{other}" not in train, other
    assert files_of("evaluate", "protonet") - train == {"pipeline/evaluate.py"}


def test_visualize_runs_the_plots_and_the_report_runs_every_method_and_plot():
    visualize = files_of("visualize", "protonet")
    assert {"src/hypermeta/viz.py", "src/hypermeta/plots/fewshot.py"} <= visualize
    assert "src/hypermeta/report.py" not in visualize
    assert "src/hypermeta/plots/regression.py" not in visualize
    report = files_of("report")
    assert {"src/hypermeta/report.py", "src/hypermeta/methods/si.py"} <= report
    assert {"src/hypermeta/plots/continual.py", "src/hypermeta/engine/regression.py"} <= report


def test_a_method_registered_through_a_helper_belongs_to_the_file_that_calls_it():
    assert METHODS.module_of("reptile") == "hypermeta.methods.reptile"  # via register_learner
    assert METHODS.module_of("maml_regression") == "hypermeta.methods.maml"
    assert METHODS.module_of("maml") == "hypermeta.methods.maml"
    assert METHODS.module_of("fomaml_regression") == "hypermeta.methods.fomaml"
    shared = {f"src/hypermeta/methods/gradient/{name}.py" for name in ("learner", "tasks")}
    assert shared <= files_of("train", "reptile")  # the machinery it imports
    assert "src/hypermeta/methods/maml.py" in files_of("train", "fomaml")  # FOMAML is MAML's


def test_the_closure_follows_every_import_but_not_registry_loops(tmp_path):
    package = tmp_path / "src" / "pkg"
    (package / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "a.py": "import torch\nfrom pkg.sub import b\n\ndef later():\n    from . import c\n",
        "c.py": "import importlib\nimportlib.import_module(f'pkg.{name}')\n",
        "d.py": "",  # reached only dynamically: not run by importing a
        "sub/__init__.py": "",
        "sub/b.py": "",
    }
    for name, text in files.items():
        (package / name).write_text(text)
    assert closure(["pkg.a"], tmp_path) == [
        f"src/pkg/{name}" for name in ("__init__.py", "a.py", "c.py", "sub/__init__.py", "sub/b.py")
    ]


def test_fingerprints_change_only_for_the_stages_that_run_an_edited_file(tmp_path):
    for folder in ("src", "pipeline"):
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("*.pyc"))
    assert len(write_fingerprints(tmp_path)) == len(list((tmp_path / FOLDER).iterdir()))
    assert write_fingerprints(tmp_path) == {}  # unchanged files are not rewritten

    protonet = tmp_path / "src/hypermeta/methods/protonet.py"
    protonet.write_text(protonet.read_text() + "# an edit\n")
    written = write_fingerprints(tmp_path)
    # protonet's stages, and pretrain's, whose classifier is a PrototypicalNetwork
    assert sorted(written) == [
        "evaluate-pretrain.json", "evaluate-protonet.json", "report.json",
        "train-pretrain.json", "train-protonet.json",
        "visualize-pretrain.json", "visualize-protonet.json",
    ]  # fmt: skip

    # a new file a method imports joins that method's stages
    helper = tmp_path / "src/hypermeta/methods/protonet_helper.py"
    helper.write_text("SCALE = 1.0\n")
    protonet.write_text(
        "from hypermeta.methods.protonet_helper import SCALE\n" + protonet.read_text()
    )
    write_fingerprints(tmp_path)
    listed = json.loads((tmp_path / FOLDER / "train-protonet.json").read_text())
    assert "src/hypermeta/methods/protonet_helper.py" in listed
    other = json.loads((tmp_path / FOLDER / "train-maml.json").read_text())
    assert "src/hypermeta/methods/protonet_helper.py" not in other

    report = tmp_path / "src/hypermeta/report.py"
    report.write_text(report.read_text() + "# an edit\n")
    before = (tmp_path / FOLDER / "report.json").read_text()
    # a dry run writes what would change elsewhere and leaves the versioned files alone
    dry = tmp_path / ".snakemake/dry"
    assert write_fingerprints(tmp_path, instead=dry) == {"report.json": dry / "report.json"}
    assert (tmp_path / FOLDER / "report.json").read_text() == before
    assert write_fingerprints(tmp_path) == {"report.json": tmp_path / FOLDER / "report.json"}
    assert (tmp_path / FOLDER / "report.json").read_text() == (dry / "report.json").read_text()
