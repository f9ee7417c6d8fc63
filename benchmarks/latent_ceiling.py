"""How far the autoencoder alone can go: PSNR of decoding the *unquantised* bottom latent (the ceiling that
refinement stages approach) next to every prefix of the quantised streams, on 16 CID22 validation crops.

    python benchmarks/latent_ceiling.py runs/hvq-ladder/checkpoint.pt     # a training checkpoint
    python benchmarks/latent_ceiling.py hvq-small                          # a shipped model
"""
import sys, torch
from hvqcodec.train import load_checkpoint
from hvqcodec.autoencoder import AutoencoderConfig, HierarchicalVQVAE
from hvqcodec.data import find_images, load_rgb, center_crops
from hvqcodec.metrics import psnr
torch.set_num_threads(1)
from hvqcodec.zoo import load_model
if sys.argv[1].endswith(".pt"):
    ck = load_checkpoint(sys.argv[1])
else:
    mm = load_model(sys.argv[1]); ck = {"config": mm.config.to_dict(), "model": mm.state_dict()}
m = HierarchicalVQVAE(AutoencoderConfig.from_dict(ck["config"])); m.load_state_dict(ck["model"]); m.eval()
paths = find_images("../shared/datasets/train/cid22/validation", ["*844297.png"])[:16]
x = center_crops([load_rgb(p, 1024) for p in paths], 256)
with torch.no_grad():
    codes = m.encode(x)
    _, _, z = m.encode_latent(x)
    c1 = m.bottom_context(codes[0], codes[1])
    rec = m._decode_bottom(z, c1).clamp(0, 1)
    print("unquantised latent", sum(psnr(rec[i], x[i]) for i in range(len(x))) / len(x))
    for n in range(3, len(codes) + 1):
        r = m.decode(codes[:n]).clamp(0, 1); print(n, sum(psnr(r[i], x[i]) for i in range(len(x))) / len(x))
