"""Train the 4-conv, 2-dense CNN (models/cnn.py).

    python train_cnn.py --data data/fashion-mnist
    python train_cnn.py --data DIR --epochs 30 --name cnn-long
    python train_cnn.py --resume runs/cnn-long --epochs 40
    python train_cnn.py --help     # every option, with this script's defaults
"""
from trainer import main

# Fashion-MNIST's garments are upright: flips help, rotations did not. 20 epochs fit an hour on 2 CPU cores
# (figures: README, Results).
DEFAULTS = dict(epochs=20, batch_size=128, img_size=28, lr=2e-3, weight_decay=0.05, rotate=0.0, label_smoothing=0.1)

if __name__ == "__main__":
    main("cnn", **DEFAULTS)
