"""Train ResNet-18 with a small-image stem (models/resnet.py).

    python train_resnet.py --data data/fashion-mnist
    python train_resnet.py --data DIR --epochs 30 --name resnet-long
    python train_resnet.py --resume runs/resnet-long --epochs 40
    python train_resnet.py --help     # every option, with this script's defaults
"""
from trainer import main

# Its recipe for plenty of data (recipe.py fits it to small data): the epochs the README's time budget holds
# (README, Results), its rate at batch 128, and sizes up to 128 px (the image size follows the images).
DEFAULTS = dict(epochs=9, lr=2e-3, translate=2, max_img_size=128)

if __name__ == "__main__":
    main("resnet", **DEFAULTS)
