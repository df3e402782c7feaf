# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Key names of the few-shot episode dicts, defined once (MONAI-style ``image`` / ``label`` naming).

Every episode producer (:class:`~labelless.fewshot.volume.episodes.SelfSupervisedEpisodeDataset`,
:class:`~labelless.fewshot.image.episodes.MetaTrainEpisodes`) and consumer
(:func:`~labelless.engines.episodic.prepare_episode_batch`, :func:`~labelless.engines.surrogate.prepare_fsms_batch`,
:func:`~labelless.evaluation.overlays.write_episode_png`) uses these names:

=================== ====================================================================================
key                 content
=================== ====================================================================================
``support_image``   the support images of the episode
``support_label``   their binary foreground masks (one per support image)
``query_image``     the query image(s)
``query_label``     the query label(s) (the training target)
``unlabeled_image`` unlabelled target-domain images (FSMS surrogate task)
``meta``            provenance of the episode (plain ``str``/``int`` values), where the producer adds it
``classes``         the class of each task (FSMS episodes)
=================== ====================================================================================

Network ``forward`` arguments (``support_images=``, ``support_masks=``, ...) and user-facing config ids are not
episode keys and keep their own names.

Examples::

    from labelless.data.keys import EpisodeKeys

    item = dataset[0]
    support, masks = item[EpisodeKeys.SUPPORT_IMAGE], item[EpisodeKeys.SUPPORT_LABEL]
"""

from __future__ import annotations

__all__ = ["EpisodeKeys", "DomainKeys", "SemiSupKeys"]


class EpisodeKeys:
    """Key names of an episode dict (class attributes are the strings).

    Attributes:
        SUPPORT_IMAGE: support images.
        SUPPORT_LABEL: support foreground masks.
        QUERY_IMAGE: query image(s).
        QUERY_LABEL: query label(s).
        UNLABELED_IMAGE: unlabelled target-domain images.
        META: episode provenance.
        CLASSES: class of each task.
    """

    SUPPORT_IMAGE = "support_image"
    SUPPORT_LABEL = "support_label"
    QUERY_IMAGE = "query_image"
    QUERY_LABEL = "query_label"
    UNLABELED_IMAGE = "unlabeled_image"
    META = "meta"
    CLASSES = "classes"


class DomainKeys:
    """Key names of an unpaired two-domain batch (weak supervision: domain A = lesion, B = normal images).

    Attributes:
        IMAGE_A: images of domain A.
        IMAGE_B: images of domain B.
    """

    IMAGE_A = "image_a"
    IMAGE_B = "image_b"


class SemiSupKeys:
    """Key names of a semi-supervised batch (SABR-Net and its baselines).

    A labelled item has ``image`` (clean) and ``label``; the network input with shadow imitation is a copy of the
    image under ``image_input``, and the shadow transform adds its keep-mask ``image_input_shadow_mask`` (1 keep,
    0 shadow) and soft map ``image_input_shadow_soft``. A paired training batch also holds an unlabelled image under
    ``unlabeled`` (its input ``unlabeled_input`` and mask ``unlabeled_input_shadow_mask``); the boundary targets of
    stage 3 are ``label_boundary`` and ``label_direction``.

    Attributes:
        IMAGE, LABEL, INPUT, KEEP_MASK, SOFT, UNLABELED, UNLABELED_INPUT, UNLABELED_KEEP_MASK, BOUNDARY, DIRECTION,
        NAME: the key strings.
    """

    IMAGE = "image"
    LABEL = "label"
    INPUT = "image_input"
    KEEP_MASK = "image_input_shadow_mask"
    SOFT = "image_input_shadow_soft"
    UNLABELED = "unlabeled"
    UNLABELED_INPUT = "unlabeled_input"
    UNLABELED_KEEP_MASK = "unlabeled_input_shadow_mask"
    BOUNDARY = "label_boundary"
    DIRECTION = "label_direction"
    NAME = "name"
