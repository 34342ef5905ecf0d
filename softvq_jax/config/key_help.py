"""Data only: one line of help for every config key of every recipe (parsed by config/keys.py).

Format of `TEXT`: `key: help` on a line of its own, continuation lines indented; `#` lines are
section titles for the reader. "T:" / "G:" start the parts of a line that differ between the
tokenizer recipes (configs/tokenizer_*.py) and the generator recipes (configs/sit_*.py); values
in parentheses are the recipes' defaults (config/defaults.py), `:quick` the quick argument's.
tests/test_config_keys.py checks that every key of every recipe has a line here, and no stale one.
"""

TEXT = """
# run: trainer, length, logging (top level)
trainer: which trainer runs (training/registry.py TRAINERS): tokenizer | sit | dit (sit_*.py
  kind= argument); generators: must equal model.name.
variant: the recipe's size name, for the record and the logs. T: S | B | BL | L (encoder/decoder
  ViTs, defaults.py TOKENIZER_VARIANTS). G: S | B | L | XL (the built size is model.variant).
seed: seed of the init, the data order and augmentation, the step keys, random frozen weights
  and the preview samples' noise (T: 42; G: 0).
batch_size: global batch (all devices and hosts) per optimizer step; must divide by the device
  count and optim.grad_accum_steps (256; :quick 16).
total_steps: training length in optimizer steps; 0: from total_epochs. T: 0 (50 epochs);
  G: 3M (the paper's generators; the reference script's default is 400k); :quick 1000 / 400.
total_epochs: training length in passes over the training set, read only when total_steps == 0
  (steps = ceil(epochs * examples / batch_size)). T: 50; G: 0.
stop_after: > 0: stop with a checkpoint after this step (the schedule still spans total_steps),
  e.g. to split a run into jobs; 0: run to the end.
log_every: steps per logging window: the progress line, TensorBoard scalars (window means) and
  the non-finite loss check (100; :quick 50).
eval_every: steps between in-training evaluations, and at the last step. T: PSNR/SSIM/MSE of the
  EMA and raw params on held-out images (5000; :quick 250); G: eval loss (10k; :quick 100).
image_every: steps between image grids (PNG under <workdir>/images and TensorBoard). T: held-out
  images beside EMA reconstructions (5000; :quick 250); G: EMA samples (10k; :quick 200).
max_eval_images: T: at most this many held-out images per in-training evaluation (10000; 0: the
  whole split; published numbers: python -m softvq_jax.evaluate). G: not read (eval.num_batches).
nan_policy: a non-finite loss or state (training/guards.py NAN_POLICIES): stop (stops, never
  saved; names the last good checkpoint) | skip_step (drops such updates; 20 in a row stop).

# model: the tokenizer (T) or the generator (G)
model.name: T: tokenizer family (models/factory.py TOKENIZERS: softvq). G: sit | dit (models/sit.py
  MODELS; kind= argument), equal to trainer.
model.image_size: image size in px. T: input and output (res= argument: 256 | 512; :quick 64),
  divisible by both patch sizes. G: the tokenizer's (res= argument), for the record; the latent
  cache's value wins.
model.encoder.variant: encoder ViT size (models/vit.py VIT_VARIANTS: mu, Ti, S, B, L, g); depth,
  width, heads of 0 come from it. tokenizer_s/b/bl/l: S, B, B, L; :quick mu.
model.encoder.patch_size: encoder patch size in px (16; :quick 8); divides model.image_size.
model.encoder.depth: encoder transformer blocks; 0: the variant's (:quick 3).
model.encoder.width: encoder hidden width; 0: the variant's (:quick 128); divisible by heads.
model.encoder.heads: encoder attention heads; 0: the variant's (:quick 4).
model.decoder.variant: decoder ViT size (models/vit.py VIT_VARIANTS); depth, width, heads of 0
  come from it. tokenizer_s/b/bl/l: S, B, L, L; :quick mu.
model.decoder.patch_size: decoder patch size in px (16; :quick 8); divides model.image_size.
model.decoder.depth: decoder transformer blocks; 0: the variant's (:quick 3).
model.decoder.width: decoder hidden width; 0: the variant's (:quick 128); divisible by heads.
model.decoder.heads: decoder attention heads; 0: the variant's (:quick 4).
model.num_latent_tokens: 1-D latent tokens L per image (tokens= argument: 32 | 64; :quick 32
  unless tokens= is given); divisible by quantizer.num_codebooks.
model.codebook_embed_dim: dimension D of a latent token and codeword: 2048 // tokens (64 x 32 or
  32 x 64, 2048 floats per image either way, as released); :quick 16.
model.layerscale_init: initial LayerScale gamma on every encoder/decoder residual branch (1e-5,
  as DINOv2 and the reference); :quick 1.0 (from scratch: full branches from step 0).
model.use_rope: 2-D mixed RoPE in encoder and decoder attention (a reference option, off in the
  recipes); needs head_dim % 4 == 0.
model.rope_theta: RoPE base frequency (10.0, the reference); read only with model.use_rope.
model.dec_cls_token: the decoder prepends a cls token (as the reference and its checkpoints);
  False drops that slot.
model.to_pixel: decoder pixel head (models/factory.py TO_PIXEL): linear (per-patch projection,
  the recipe) | conv (reference: 1x1 conv, 4 x [nearest x2, 3x3 conv]; decoder patch 16).
model.dtype: compute dtype; params stay float32 (models/factory.py DTYPES: float32 | bfloat16 |
  float16). Recipes bfloat16; :quick float32.
model.remat: recompute each transformer block in the backward pass (less activation memory,
  about a third more compute).
model.attn_impl: attention kernel (models/attention.py): "" (one head at a time on CPU, which
  keeps the scores in cache; jax.nn.dot_product_attention's choice elsewhere) | xla | cudnn (the
  fused GPU kernel) | per_head.
model.vq_mean: mean for the generators' latent normalisation (z - vq_mean) / vq_std. T: not read
  in training; python -m softvq_jax.export measures it (0.0 until then). G: read only when
  model.vq_std > 0, else resolved from the latents (model.latent_stats).
model.vq_std: std of that normalisation. T: 1.0 until export measures it; > 0. G: 0: from the
  latents (model.latent_stats); > 0: model.vq_mean/vq_std as given.
model.encoder_init: timm-layout DINOv2 .safetensors (vit_base_patch14_dinov2.lvd142m, or L) to
  start the encoder from on a fresh run (as the released models; the 14x14 kernel and 37x37
  position grid are resampled); "": random init.
model.variant: generator size (models/sit.py SIT_VARIANTS, depth/width/heads: mu 2/64/4,
  S 12/384/6, B 12/768/12, L 24/1024/16, XL 28/1152/16); from the file; :quick mu.
model.patch_size: latent tokens per generator patch; must be 1 for 1-D tokens ("SiT-B/1").
model.num_tokens: latent tokens L the generator sees; 0: from the latents (saved resolved in the
  run's config); else checked against them (tokens= argument).
model.dim: channels D per latent token; 0: from the latents; else checked against them.
model.num_classes: class labels (1000, ImageNet; :quick 16); label num_classes is the null class
  of classifier-free guidance.
model.class_dropout_prob: probability that a training label is replaced by the null class
  (trains the unconditional model for CFG), in [0, 1) (0.1, SiT/DiT).
model.qk_norm: LayerNorm on queries and keys in the generator's attention (off, as SiT/DiT).
model.tokenizer: tokenizer (exported model dir or workdir) that decodes the preview sample grids
  (tokenizer= argument); "": the one the latent cache records (grids skipped if not found).
model.latent_stats: source of vq_mean/vq_std with data.name=latents: cache (measured on the cached
  latents) | tokenizer (its config's values, recorded in the cache); latents_online: tokenizer's.

# quantizer (tokenizer only)
quantizer.name: bottleneck (models/quantizers.py QUANTIZERS): softvq (the paper) | vq (hard VQ,
  straight-through) | kl (diagonal Gaussian) | ae (no bottleneck).
quantizer.codebook_size: codes K per codebook (softvq, vq; 8192; :quick 512).
quantizer.num_codebooks: codebooks; they split the token sequence (token l uses codebook
  l // (L / nc)); must divide model.num_latent_tokens (4; :quick 2).
quantizer.tau: softvq softmax temperature over the code logits (0.07, the paper); > 0.
quantizer.l2_norm: l2-normalise tokens and codewords before the logits/distances (as the
  reference).
quantizer.logit_form: softvq logits (models/quantizers.py LOGIT_FORMS): cosine (<z, sg(C)>, the
  reference code) | distance (-||z - sg(C)||, the paper's form).
quantizer.entropy_loss_ratio: weight of the entropy regulariser H_sample - H_avg (softvq, vq;
  marginal over the global batch) (0.01); 0 disables it.
quantizer.entropy_temperature: softmax temperature of the entropy regulariser (0.01, the
  reference); > 0.
quantizer.commit_beta: vq only: commitment loss weight (0.25, VQ-VAE).
quantizer.kl_weight: kl only: weight of KL(q || N(0, I)) (1e-6).

# loss (tokenizer only): L_G = rec + LPIPS + entropy + GAN + alignment
loss.rec_type: pixel reconstruction loss (objectives/reconstruction.py REC_TYPES): l2 (MSE, the
  recipe) | l1.
loss.rec_weight: weight of the reconstruction loss (1.0).
loss.perceptual_weight: weight of the LPIPS-VGG16 loss (1.0; :quick 0); 0 disables LPIPS and its
  weight files.
loss.perceptual_warmup: steps of the linear ramp of the LPIPS weight from 0 to perceptual_weight
  (1-based step, 10k); 0: the full weight from step 1.
loss.lpips_vgg_path: VGG16 trunk file (torchvision vgg16-397923af.pth, or timm vgg16.tv_in1k
  safetensors); "": allowed when lpips_lin_path is a full LPIPS state dict.
loss.lpips_lin_path: LPIPS heads file (PerceptualSimilarity lpips/weights/v0.1/vgg.pth) or a full
  LPIPS().state_dict(); required when perceptual_weight > 0 (unless random_init).
loss.random_init: give each frozen network whose file is missing (LPIPS, DINO trunk, DINOv2
  teacher) random weights of the published shapes (logged): tests and CPU smoke runs only.
loss.disc.name: discriminator (models/discriminators DISCRIMINATORS): dino (frozen DINO ViT-S/16
  + trainable heads, the recipe) | patchgan (pix2pix NLayer, no weight file; :quick).
loss.disc.ndf: patchgan base channel width (64; :quick 32).
loss.disc.n_layers: patchgan stride-2 conv layers (3; :quick 2).
loss.disc.weight: weight of the generator's adversarial loss (0.2); 0 disables the GAN (no
  discriminator is built).
loss.disc.start: 1-based step from which the GAN terms count and D is updated (20k; :quick 500).
loss.disc.loss: discriminator loss (objectives/adversarial.py D_LOSSES): hinge | vanilla |
  non-saturating (also spelt non_saturating).
loss.disc.gen_loss: generator adversarial loss (objectives/adversarial.py G_LOSSES): hinge
  (-mean D(fake)) | non-saturating.
loss.disc.adaptive_weight: scale the GAN weight by ||grad nll|| / ||grad g_adv|| at the decoder's
  last layer (VQGAN; two extra backward passes); off in the recipe.
loss.disc.dino_path: DINO ViT-S/16 trunk file (facebookresearch dino_deitsmall16_pretrain.pth, or
  timm vit_small_patch16_224.dino safetensors); needed with name=dino, weight > 0.
loss.disc.init_from: model dir of converted reference DinoDisc heads (python -m softvq_jax.convert
  dino-disc) to start the discriminator from on a fresh run; "": random heads.
loss.disc.dino_variant: DINO trunk size (models/frozen/dino.py TRUNK_VARIANTS): S (the published
  ViT-S/16) | tiny (random weights only: tests, smoke runs).
loss.disc.diffaug: DiffAugment the real and fake images before D (on).
loss.disc.diffaug_policy: DiffAugment groups, comma-separated (objectives/diffaug.py): color,
  translation, cutout_<ratio> (color,translation,cutout_0.2).
loss.disc.diffaug_prob: probability that a batch is augmented (one draw per batch), in [0, 1]
  (0.5).
loss.disc.lecam_weight: weight of the LeCam regulariser on D (0.001); 0 disables it (and its
  EMAs).
loss.disc.lecam_decay: EMA decay of the real/fake D outputs that LeCam anchors to (0.999).
loss.disc.cr_weight: consistency regularisation weight: MSE between D's outputs on the images and
  on strongly augmented ones, from loss.disc.start (4.0); 0 disables it.
loss.disc.cr_policy: DiffAugment groups of the consistency regularisation's augmentation, always
  applied (color,translation,cutout_0.5).
loss.align.weight: weight of -cos(MLP(z_q), DINOv2 features) (0.1; :quick 0); 0 disables it (no
  teacher, no projector).
loss.align.teacher_path: DINOv2 teacher file (timm vit_large_patch14_dinov2.lvd142m safetensors;
  S/B/G and *_reg4_* too); needed when weight > 0 (unless random_init).
loss.align.teacher_variant: DINOv2 size of teacher_path (models/frozen/dinov2.py TEACHER_VARIANTS:
  S, B, L, G; tiny, tiny_g random only) (L).
loss.align.mode: how latent tokens meet teacher tokens (models/projector.py ALIGN_MODES): repeat
  (token l vs its N/L teacher tokens; the recipe) | global | avg_1d | avg_1d_shuffle.
loss.align.proj_dim: hidden width of the projector MLP D -> h -> h -> C (1024, reference
  build_mlp).
loss.align.teacher_patch_size: patch size the teacher runs at (its 14x14 kernel resampled; 16);
  must divide model.image_size.

# optim: the optimizer (T: the discriminator gets its own with the same settings)
optim.name: optimizer (training/optim.py OPTIMIZERS): adamw (weight decay on matrices only, not on
  biases and 1-D params) | adam (no weight decay, the reference as shipped).
optim.lr: peak learning rate. T: at batch 256, x batch_size/256 with lr_batch_scaling (1e-4,
  the paper; :quick 1e-3 unscaled). G: used as is (1e-4 constant, as SiT; :quick 1e-3).
optim.lr_batch_scaling: T: multiply lr by batch_size / 256 (the reference's linear scaling; on;
  :quick off). G: not read.
optim.b1: Adam beta1 (0.9).
optim.b2: Adam beta2 (T: 0.95, the paper; G: 0.999, as SiT).
optim.eps: Adam epsilon (1e-8).
optim.weight_decay: adamw's decoupled weight decay (T: 1e-4; G: 0).
optim.schedule: lr after the warm-up (training/optim.py SCHEDULES): cosine (to min_lr_ratio x lr
  at total_steps, timm-style; T) | constant (G).
optim.warmup_steps: linear warm-up steps from warmup_init_lr to lr; 0: from warmup_epochs
  (:quick tokenizer 50).
optim.warmup_epochs: warm-up in epochs, read only when warmup_steps == 0 (T: 1.0; G: 0, none).
optim.warmup_init_lr: lr at the start of the warm-up (timm's warmup_lr; capped at lr) (T: 1e-5;
  G: 0).
optim.min_lr_ratio: floor of the cosine as a fraction of the peak lr, in [0, 1] (T: 0.1; G: 0).
optim.grad_clip: clip gradients to this global norm; 0: no clipping (T and SiT: 1.0; DiT: 0, as
  train_dit.py).
optim.ema_decay: decay of the EMA params used for evaluation, images and export, in [0, 1)
  (0.9999; :quick 0.99).
optim.grad_accum_steps: T: average gradients over this many micro-batches per step (1: off; not
  with the GAN or alignment loss). G: not read.

# data (most keys belong to one dataset; a set path the chosen data.name ignores is refused)
data.name: dataset (data/__init__.py SOURCES). T: imagenet (TFDS, the recipe) | photos (the
  bundled photos; :quick) | folder. G: latents (a cache) | latents_online (encoded while training).
data.path: folder: the image folder; latents: the cache dir (python -m
  softvq_jax.data.cache_latents); "": unused.
data.eval_path: folder: the held-out image folder ("": hold out data.eval_fraction of data.path);
  latents: a cache to evaluate on ("": the first data.eval_examples of the training cache).
data.eval_fraction: folder without eval_path: fraction of the images held out (seeded, at least
  one) (0.1).
data.data_dir: imagenet: TFDS data_dir, local or mounted ("": ~/tensorflow_datasets).
data.manual_dir: imagenet: the ImageNet tars; a first single-process run prepares data_dir from
  them ("": already prepared).
data.tfds_name: imagenet: the TFDS dataset (imagenet2012; any TFDS image dataset in array_record).
data.train_split: imagenet: the TFDS training split (train).
data.eval_split: imagenet: the TFDS held-out split (validation).
data.file_format: imagenet: "" (what data.reader picks), array_record (random access) or
  tfrecord (the tf.data reader); others are refused.
data.reader: imagenet: auto (array_record on local/mounted disk, else tfrecord) | array_record
  (random access, POSIX paths) | tfrecord (tf.data streams, local or gs://; training and eval).
data.tfrecord_streams: tfrecord reader: sequential streams K of shard files (16); must divide the
  global batch and be divisible by the process count; memory: two shard files per local stream.
data.random_crop: training crops: ADM random crop (on) or ADM center crop (off).
data.random_flip: random horizontal flips. T: of the training images (p = 0.5); G: picks the
  cache's flipped latents (on).
data.min_crop_frac: smallest random crop as a fraction of the resized short side, in (0, 1] (0.8,
  ADM; :quick 0.2 for nine photos).
data.num_workers: decode threads per process (T: 0 = every core this process may use; G: 4;
  :quick 2).
data.prefetch: batches prepared ahead of the train step (T: 4; G: 2; :quick 2).
data.uint8_transfer: ship uint8 training images and convert them to [-1, 1] on the device (on).
data.jpeg_draft: decode JPEGs at reduced size where the ADM resize halves them anyway (faster on
  large photos, not bitwise equal; off).
data.exact_resize: training crops resize the whole image and then crop, bitwise the reference's
  ADM crop (off: only the crop's window is resized, ~1.6x less CPU per image, values within 2
  levels on ~3e-4 of them).
data.eval_crops: photos only: views per held-out photo, the center crop plus fixed random crops
  (4).
data.eval_examples: latents without data.eval_path: evaluate on the first N examples of the
  training cache, not held out (1000).
data.tokenizer: latents_online: the tokenizer (model dir or workdir) that encodes the images.
data.image_source: latents_online: the images to encode (photos | folder | imagenet, with that
  dataset's data.* keys) (photos).

# eval
eval.batch_size: global batch of the evaluations and image grids (64; :quick 8).
eval.num_images_grid: images in the preview grid. T: held-out images beside their reconstructions
  (8); G: samples (16; :quick 8).
eval.num_batches: G: eval batches per evaluation (8; :quick 2).

# transport, diffusion, sampling (generators; transport: SiT, diffusion: DiT)
transport.path: SiT interpolant (objectives/transport.py PATHS): linear (x_t = (1-t) x + t eps) |
  cosine (GVP).
transport.prediction: what the SiT predicts (objectives/transport.py PREDICTIONS); training needs
  v (the samplers integrate a velocity).
transport.time_sampling: SiT training times (objectives/transport.py TIME_SAMPLING): uniform |
  lognormal (s = exp(N(0, 1)) mapped to t; the recipe).
diffusion.noise_schedule: DiT beta schedule (objectives/diffusion.py SCHEDULES): linear | cosine
  (the recipe); also the preview sampler's.
diffusion.steps: DiT training diffusion steps (1000, ADM); preview sampling respaces a 1000-step
  schedule to sampling.steps.
sampling.sampler: SiT preview sampler (sampling/generate.py SAMPLERS): ode (Euler/Heun, the
  reference's grids) | sde (Euler-Maruyama); DiT always samples with diffusion (ancestral).
sampling.steps: preview sampler steps (50; :quick 20); DiT: respaced diffusion steps; >= 2.
sampling.heun: ode only: Heun's second-order step (two model calls per step) (off).
sampling.cfg_scale: classifier-free guidance scale of the preview grids (4.0, the reference); 1:
  no guidance; >= 1.
sampling.cfg_low: SiT: guidance only at times t >= cfg_low (t = 1 noise, 0 data) (0.0).
sampling.cfg_high: SiT: guidance only at times t <= cfg_high (1.0: up to pure noise).

# ckpt, mesh
ckpt.save_every: steps between checkpoints (T: 10k; G: 50k; :quick 250 / 200); the last step and
  a stop signal always save.
ckpt.keep: newest checkpoints kept (3); older ones are deleted unless keep_every keeps them.
ckpt.keep_every: also keep every checkpoint at a multiple of this step (T: 50k; G: 100k); 0: none.
ckpt.async_save: write checkpoints in the background (Orbax async) (on).
ckpt.restore_step: 0: resume from the newest good checkpoint; N: from step N (newer ones are
  moved to <workdir>/checkpoints_set_aside/, never deleted).
mesh.data: data-parallel mesh axis (params replicated); -1: every device not used by fsdp.
mesh.fsdp: FSDP mesh axis: large params and optimizer state sharded over it, the batch split too;
  must divide the device count; 1: no sharding.

# performance accounting and profiling
peak_tflops: peak TFLOP/s of one device for the MFU on the progress line and perf/mfu; 0: bf16
  dense peak of the device kind (training/flops.py PEAK_TFLOPS; unknown: TFLOP/s only) (0).
profile.start_step: first step of the jax.profiler trace (<workdir>/profile, TensorBoard's
  profile tab); 0: the first step run (0).
profile.num_steps: steps to trace from profile.start_step; 0: no trace (0).
"""
