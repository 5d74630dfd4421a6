"""Train CoAtNet-0 from timm, built for the image size (models/coatnet.py).

    python train_coatnet.py --data data/fashion-mnist
    python train_coatnet.py --data DIR --epochs 30 --name coatnet-long
    python train_coatnet.py --resume runs/coatnet-long --epochs 40
    python train_coatnet.py --help     # every option, with this script's defaults
"""
from trainer import main

# CoAtNet needs a multiple of 32 (recipe.py rounds the size taken from the images to one). Its epochs are what
# the README's time budget holds (README, Results); sizes taken from the images go up to its pretrained 224 px.
DEFAULTS = dict(epochs=5, max_img_size=224, lr=2e-3, translate=2)

if __name__ == "__main__":
    main("coatnet", **DEFAULTS)
