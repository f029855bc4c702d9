"""ToyVOS pre-training of image encoders (``voszoo-pretrain``): the embedded analogue of the papers' ImageNet and
static-image stages, and the cache that serves its result as ``weights: toyvos`` (docs/pretraining.md)."""
