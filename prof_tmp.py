import time, torch, numpy as np
from sklearn.datasets import load_digits
from mia.data.base import Dataset
from mia.models import build_model
from mia.train import train, TrainConfig, seed_everything
d = load_digits()
x = torch.tensor(np.round(d.images * 255 / 16), dtype=torch.uint8).unsqueeze(1)
data = Dataset("digits", x, torch.tensor(d.target), 10, "image")
perm = np.random.default_rng(0).permutation(len(data))
tr, va = perm[:400], perm[1200:1500]
for lr in [0.01, 0.03, 0.1]:
    cfg = TrainConfig(epochs=8, batch_size=64, optimizer="adam", lr=lr, weight_decay=0, schedule="constant")
    seed_everything(0)
    model = build_model("mlp", data.input_shape, 10)
    t = time.time()
    r = train(model, data, tr, va, cfg, progress=False)
    print(lr, r.best_epoch, round(time.time()-t, 2), [round(h["val_accuracy"],3) for h in r.history])
