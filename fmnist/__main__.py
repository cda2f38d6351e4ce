"""`python -m fmnist`: the list of fmnist's commands, one line each."""

from __future__ import annotations

from fmnist.utils.console import quiet_pipe

# command: what it does (each is `python -m fmnist.<command>` and the console script `fmnist-<command>`)
COMMANDS = {
    "train": "train a network with its recipe: model=cnn|rnn|bilstm|lstm|gru|attention|resnet [key=value ...]",
    "evaluate": "reports of a checkpoint on the test (or validation) split: ckpt_path=PATH [ood=true]",
    "compare": "runs side by side, mean ± std over seeds: RUN_OR_SWEEP_DIR... [--out DIR]",
    "cluster": "k-means of the learned embedding vs raw pixels: ckpt_path=PATH [k=10]",
    "predict": "classify image files, and say which are not garments: ckpt_path=PATH inputs=FILE_OR_DIR",
    "export": "ONNX or TorchScript, checked against PyTorch: ckpt_path=PATH format=onnx|torchscript",
    "explore": "describe the data set and draw samples of each class",
    "reproduce": "the study's three recipes x 3 seeds, then docs/RESULTS.md",
    "tune": "search hyperparameters (Optuna, pruning, shared storage): model=rnn [tune.n_trials=20]",
    "serve": "a web page (Gradio): classify a photo, garment or not, look-alikes: ckpt_path=PATH",
}


@quiet_pipe
def main() -> None:
    """Print the commands."""
    print("fmnist commands (python -m fmnist.<command> or fmnist-<command>; add --help for options):")
    for name, line in COMMANDS.items():
        print(f"  {name:<10} {line}")


if __name__ == "__main__":
    main()
