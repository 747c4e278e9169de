"""``mace_run_train``, then the model it wrote as a model package: the trainer's child process.

Run as ``python -m mlipilot.training.mace_entry PACKAGE <mace_run_train flags>``. mace-torch
saves the trained model as a pickle (``<name>.model``, or ``<name>_stagetwo.model`` when stage
two ran: the one the run ends with). It is read back here, in the process that has just
written it, and leaves the trainer only as a package (configuration + tensors,
model_files/package.py): nothing downstream (orchestrator, Ray, scorecard service) ever
unpickles a model.
"""

from __future__ import annotations

import sys
from pathlib import Path


def final_model_file(model_dir: Path, name: str) -> Path | None:
    """The model mace_run_train ended with: stage two's when it ran, else stage one's."""
    for file_name in (f"{name}_stagetwo.model", f"{name}.model"):
        if (model_dir / file_name).is_file():
            return model_dir / file_name
    return None


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        raise SystemExit("usage: python -m mlipilot.training.mace_entry PACKAGE [mace flags]")
    package, mace_argv = Path(argv[0]), argv[1:]
    import torch
    from mace import tools
    from mace.cli.run_train import run

    from mlipilot.model_files import write_package

    args = tools.build_default_arg_parser().parse_args(mace_argv)
    run(args)
    model_file = final_model_file(Path(args.model_dir or args.work_dir), args.name)
    if model_file is None:
        raise SystemExit("mlipilot: mace_run_train finished but wrote no model file")
    # Our own pickle, written by mace_run_train in this process moments ago.
    model = torch.load(model_file, map_location="cpu", weights_only=False)
    write_package(model, package)
    print(f"mlipilot: model package {package} from {model_file.name}", flush=True)


if __name__ == "__main__":
    main()
