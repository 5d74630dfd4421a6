"""Train the 4-conv, 2-dense CNN (models/cnn.py).

    python train_cnn.py --data data/fashion-mnist
    python train_cnn.py --data DIR --epochs 30 --name cnn-long
    python train_cnn.py --resume runs/cnn-long --epochs 40
    python train_cnn.py --help     # every option, with this script's defaults
"""
from trainer import main

# Its recipe for plenty of data (recipe.py fits it to small data): the epochs the README's time budget holds
# (README, Results), its rate at batch 128, and sizes up to 64 px (the image size follows the images).
DEFAULTS = dict(epochs=20, lr=2e-3, max_img_size=64)

if __name__ == "__main__":
    main("cnn", **DEFAULTS)
