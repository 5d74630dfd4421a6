"""Train the 4-conv, 2-dense CNN (models/cnn.py).

    python train_cnn.py --data data/fashion-mnist
    python train_cnn.py --data DIR --epochs 30 --name cnn-long
    python train_cnn.py --resume runs/cnn-long --epochs 40
    python train_cnn.py --help     # every option, with this script's defaults
"""
from trainer import main

# Its epochs are what the README's time budget holds (README, Results).
DEFAULTS = dict(epochs=20, img_size=28, lr=2e-3)

if __name__ == "__main__":
    main("cnn", **DEFAULTS)
