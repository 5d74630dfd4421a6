"""Train CoAtNet-0 from timm, built for the image size (models/coatnet.py).

    python train_coatnet.py --data data/fashion-mnist
    python train_coatnet.py --data DIR --epochs 30 --name coatnet-long
    python train_coatnet.py --resume runs/coatnet-long --epochs 40
    python train_coatnet.py --help     # every option, with this script's defaults
"""
from trainer import main

# CoAtNet needs a multiple of 32, so 32 px (its attention stages then see 2x2 and 1x1 maps). 5 epochs fit an
# hour on 2 CPU cores (figures: README, Results).
DEFAULTS = dict(epochs=5, batch_size=128, img_size=32, lr=2e-3, weight_decay=0.05, rotate=0.0, translate=2,
                label_smoothing=0.1, warmup_epochs=1.0)

if __name__ == "__main__":
    main("coatnet", **DEFAULTS)
