#!/usr/bin/env bash
# The synthetic ablation of docs/study.md (issue 14): which part of the recipe decides how much of
# the teacher's localisation an SSWA /8 student keeps. Every step is one `attrpreserve sweep`;
# rerunning the script skips the finished runs and rebuilds every table and plot from the runs.
#
#   bash examples/synthetic_ablation.sh            # everything, in order
#   bash examples/synthetic_ablation.sh arms layer # only these steps
#
# On a 2-core machine one student run (60 epochs, 1 thread) takes 4-6 minutes; WORKERS=2 runs two
# at a time. OUT (default runs/sweeps) holds one folder per step.
set -euo pipefail
OUT=${OUT:-runs/sweeps}
SEEDS=${SEEDS:-0,1,2}
WORKERS=${WORKERS:-2}
C=examples/synthetic_ablation  # the baseline configs as the study ran them (configs/synthetic/ moved on)
# Every student of a seed distils that seed's teacher; data.seed follows the seed, so the spread
# covers data, teacher and student initialisation. Validation every 10 epochs: the numbers that
# count are evaluate's, on the localisation split, after the fit.
COMMON=(--seeds "$SEEDS" --set 'data.seed={seed}' --protocols all,paper --workers "$WORKERS" --threads 1)
TAUGHT=("${COMMON[@]}" --set trainer.check_val_every_n_epoch=10 --teacher-weights "$OUT/teachers/teacher/seed={seed}/final.ckpt"
        --reference "teacher=$OUT/teachers/teacher")
STUDENT=("${TAUGHT[@]}")  # against the 60-epoch KD students of step arms, once they exist
[ -d "$OUT/arms/distill_div8_kd" ] && STUDENT+=(--reference "KD=$OUT/arms/distill_div8_kd")

STEPS="$*"
step() { [ -z "$STEPS" ] || [[ " $STEPS " == *" $1 "* ]]; }

if step teachers; then  # the teachers: vgg_small, 25 epochs, one per seed
  attrpreserve sweep --config $C/teacher.yaml "${COMMON[@]}" --out "$OUT/teachers"
fi
if step arms; then  # the defaults: KD against SSWA, SWA and EWA (beta 100, pool5, drop 0.3, 60 epochs)
  attrpreserve sweep --config $C/distill_div8_kd.yaml --config $C/distill_div8_sswa.yaml \
    --config $C/distill_div8_swa.yaml --config $C/distill_div8_ewa.yaml "${STUDENT[@]}" --out "$OUT/arms"
fi
if step layer; then  # the matched layer: pool5 (the paper's; 8x8 on vgg_small) against conv5_3 (16x16, where Grad-CAM is scored)
  attrpreserve sweep --config $C/distill_div8_sswa.yaml --grid callbacks.AttributionMatching.layer=conv5_3 "${STUDENT[@]}" --out "$OUT/layer"
fi
if step floor; then  # labels only: no KD, no matching (the floor)
  attrpreserve sweep --config $C/distill_div8_kd.yaml --set model.kd=null --set data.cache_teacher=false \
    "${STUDENT[@]}" --out "$OUT/floor"
fi
if step layerbeta; then  # the matching weight with conv5_3 matched (256 positions: beta 100 there weighs a
  # cosine point a quarter of what it weighs at pool5's 64)
  attrpreserve sweep --config $C/distill_div8_sswa.yaml --set callbacks.AttributionMatching.layer=conv5_3 \
    --grid callbacks.weight=1000 "${STUDENT[@]}" --out "$OUT/layer_beta"
fi
if step epochs || step epochs_kd; then  # student length: 100 epochs (learning-rate step at 75 %): KD
  attrpreserve sweep --config $C/distill_div8_kd.yaml --set trainer.max_epochs=100 --set 'model.milestones=[75]' \
    "${STUDENT[@]}" --out "$OUT/epochs100_kd"
fi
if step epochs || step epochs_sswa; then  # ... and SSWA matched at conv5_3, against the 100-epoch KD students
  KD100=()
  [ -d "$OUT/epochs100_kd/distill_div8_kd" ] && KD100=(--reference "KD=$OUT/epochs100_kd/distill_div8_kd")
  attrpreserve sweep --config $C/distill_div8_sswa.yaml --set callbacks.AttributionMatching.layer=conv5_3 \
    --set trainer.max_epochs=100 --set 'model.milestones=[75]' "${STUDENT[@]}" "${KD100[@]}" --out "$OUT/epochs100_sswa"
fi
if step width; then  # student capacity: /4 students (8-16-32-32 channels) against /8 (4-8-16-16), SSWA at conv5_3
  attrpreserve sweep --config $C/distill_div4_kd.yaml "${STUDENT[@]}" --out "$OUT/width_kd"
  attrpreserve sweep --config $C/distill_div4_sswa.yaml --set callbacks.AttributionMatching.layer=conv5_3 \
    "${STUDENT[@]}" --reference "KD=$OUT/width_kd/distill_div4_kd" --out "$OUT/width_sswa"
fi
if step online; then  # the teacher run online in every step (fresh crops each epoch) instead of 8 cached views
  attrpreserve sweep --config $C/distill_div8_kd.yaml --set data.cache_teacher=false "${STUDENT[@]}" --out "$OUT/online_kd"
  attrpreserve sweep --config $C/distill_div8_sswa.yaml --set callbacks.AttributionMatching.layer=conv5_3 \
    --set data.cache_teacher=false "${STUDENT[@]}" --reference "KD=$OUT/online_kd/distill_div8_kd" --out "$OUT/online_sswa"
fi
if step head; then  # the head: flatten + linear over a 2x2 pool (head_pool 2: four quadrants, as VGG16 flattens its 7x7) for
  # teacher and students, against global average pooling (the baseline). The students match at conv5_3 (the layer step).
  HT="$OUT/head_teachers/teacher/head_pool=2"
  attrpreserve sweep --config $C/teacher.yaml --grid model.model.head_pool=2 "${COMMON[@]}" --out "$OUT/head_teachers"
  HEAD=("${COMMON[@]}" --set trainer.check_val_every_n_epoch=10 --set model.teacher.head_pool=2 --set model.student.head_pool=2
        --teacher-weights "$HT/seed={seed}/final.ckpt" --reference "teacher=$HT")
  attrpreserve sweep --config $C/distill_div8_kd.yaml "${HEAD[@]}" --out "$OUT/head_kd"
  attrpreserve sweep --config $C/distill_div8_sswa.yaml --set callbacks.AttributionMatching.layer=conv5_3 "${HEAD[@]}" \
    --reference "KD=$OUT/head_kd/distill_div8_kd" --out "$OUT/head_sswa"
fi
if step target; then  # the matched classes: every ground-truth class of every image, each pair matched on its own
  # (target per_label), against the paper's teacher top-1 map per image; the defaults' recipe (conv5_3, 100 epochs)
  KD100=()
  [ -d "$OUT/epochs100_kd/distill_div8_kd" ] && KD100=(--reference "KD=$OUT/epochs100_kd/distill_div8_kd")
  attrpreserve sweep --config $C/distill_div8_sswa.yaml --set callbacks.AttributionMatching.layer=conv5_3 \
    --set trainer.max_epochs=100 --set 'model.milestones=[75]' --grid callbacks.AttributionMatching.target=per_label \
    "${STUDENT[@]}" "${KD100[@]}" --out "$OUT/target"
fi
if step target60; then  # ... and at 60 epochs, against the 60-epoch KD students (the layer step's length)
  attrpreserve sweep --config $C/distill_div8_sswa.yaml --set callbacks.AttributionMatching.layer=conv5_3 \
    --grid callbacks.AttributionMatching.target=per_label "${STUDENT[@]}" --out "$OUT/target60"
fi
if step headtarget; then  # the head and the matched classes together: head_pool 2, every ground-truth class, 60 epochs
  HT="$OUT/head_teachers/teacher/head_pool=2"
  attrpreserve sweep --config $C/distill_div8_sswa.yaml --set callbacks.AttributionMatching.layer=conv5_3 \
    --grid callbacks.AttributionMatching.target=per_label "${COMMON[@]}" --set trainer.check_val_every_n_epoch=10 \
    --set model.teacher.head_pool=2 --set model.student.head_pool=2 --teacher-weights "$HT/seed={seed}/final.ckpt" \
    --reference "teacher=$HT" --reference "KD=$OUT/head_kd/distill_div8_kd" --out "$OUT/head_target"
fi
for E in 100 150; do  # head_pool 2 with every ground-truth class matched, at 100 epochs (the defaults' length, step at 75)
  # and 150 (step at 112)
  if step head$E; then
    HT="$OUT/head_teachers/teacher/head_pool=2"
    attrpreserve sweep --config $C/teacher.yaml --grid model.model.head_pool=2 "${COMMON[@]}" --out "$OUT/head_teachers"
    HE=("${COMMON[@]}" --set trainer.check_val_every_n_epoch=10 --set trainer.max_epochs=$E --set "model.milestones=[$((E * 3 / 4))]"
        --set model.teacher.head_pool=2 --set model.student.head_pool=2 --teacher-weights "$HT/seed={seed}/final.ckpt"
        --reference "teacher=$HT")
    attrpreserve sweep --config $C/distill_div8_kd.yaml "${HE[@]}" --out "$OUT/head${E}_kd"
    attrpreserve sweep --config $C/distill_div8_sswa.yaml --set callbacks.AttributionMatching.layer=conv5_3 \
      --set callbacks.AttributionMatching.target=per_label "${HE[@]}" --reference "KD=$OUT/head${E}_kd/distill_div8_kd" \
      --out "$OUT/head${E}_sswa"
  fi
done
if step targetbeta; then  # every ground-truth class matched, beta 300 (100 epochs, conv5_3)
  KD100=()
  [ -d "$OUT/epochs100_kd/distill_div8_kd" ] && KD100=(--reference "KD=$OUT/epochs100_kd/distill_div8_kd")
  attrpreserve sweep --config $C/distill_div8_sswa.yaml --set callbacks.AttributionMatching.layer=conv5_3 \
    --set trainer.max_epochs=100 --set 'model.milestones=[75]' --set callbacks.AttributionMatching.target=per_label \
    --grid callbacks.weight=300 "${STUDENT[@]}" "${KD100[@]}" --out "$OUT/target_beta"
fi
if step crop; then  # the students' crop: the paper's scale range 0.08-1 (baseline 0.5-1) for the cached views, with the
  # paper's labels (a class stays however little of it the crop keeps: min_visible 0) and label-aware ones (0.5, the baseline's)
  attrpreserve sweep --config $C/distill_div8_kd.yaml --set 'data.scale=[0.08,1.0]' --grid data.min_visible=0.0,0.5 \
    "${TAUGHT[@]}" --out "$OUT/crop_kd"
  for mv in 0.0 0.5; do  # one SSWA sweep per crop, each against the KD students of its crop; both at once, a core each
    attrpreserve sweep --config $C/distill_div8_sswa.yaml --set callbacks.AttributionMatching.layer=conv5_3 \
      --set 'data.scale=[0.08,1.0]' --set data.min_visible=$mv "${TAUGHT[@]}" --workers 1 \
      --reference "KD=$OUT/crop_kd/distill_div8_kd/min_visible=$mv" --out "$OUT/crop_sswa_$mv" &
  done
  wait
fi
if step epochs150; then  # the defaults' recipe (every class, conv5_3) at 150 student epochs (step at 112), against KD at 150
  E150=(--set trainer.max_epochs=150 --set 'model.milestones=[112]')
  attrpreserve sweep --config $C/distill_div8_kd.yaml "${E150[@]}" "${TAUGHT[@]}" --out "$OUT/epochs150_kd"
  attrpreserve sweep --config $C/distill_div8_sswa.yaml --set callbacks.AttributionMatching.layer=conv5_3 \
    --set callbacks.AttributionMatching.target=per_label "${E150[@]}" "${TAUGHT[@]}" \
    --reference "KD=$OUT/epochs150_kd/distill_div8_kd" --out "$OUT/epochs150_sswa"
fi
if step arms100; then  # SWA and EWA at the defaults' recipe (every class, conv5_3, 100 epochs), against the 100-epoch KD
  KD100=()
  [ -d "$OUT/epochs100_kd/distill_div8_kd" ] && KD100=(--reference "KD=$OUT/epochs100_kd/distill_div8_kd")
  attrpreserve sweep --config $C/distill_div8_swa.yaml --config $C/distill_div8_ewa.yaml \
    --set callbacks.AttributionMatching.layer=conv5_3 --set callbacks.AttributionMatching.target=per_label \
    --set trainer.max_epochs=100 --set 'model.milestones=[75]' "${STUDENT[@]}" "${KD100[@]}" --out "$OUT/arms100"
fi
if step teacherlen; then  # the teacher's length: 50 epochs (step at 36) instead of 25; its KD and SSWA students as in
  # step target60 (every class, conv5_3, 60 epochs)
  TL="$OUT/teacher_len/teacher/max_epochs=50"
  attrpreserve sweep --config $C/teacher.yaml --grid trainer.max_epochs=50 --set 'model.milestones=[36]' "${COMMON[@]}" \
    --out "$OUT/teacher_len"
  TLS=("${COMMON[@]}" --set trainer.check_val_every_n_epoch=10 --teacher-weights "$TL/seed={seed}/final.ckpt"
       --reference "teacher=$TL")
  attrpreserve sweep --config $C/distill_div8_kd.yaml "${TLS[@]}" --out "$OUT/teacherlen_kd"
  attrpreserve sweep --config $C/distill_div8_sswa.yaml --set callbacks.AttributionMatching.layer=conv5_3 \
    --set callbacks.AttributionMatching.target=per_label "${TLS[@]}" \
    --reference "KD=$OUT/teacherlen_kd/distill_div8_kd" --out "$OUT/teacherlen_sswa"
fi
for E in 100 150; do  # the 50-epoch teachers with the defaults' students (every class, conv5_3), 100 and 150 epochs
  if step teacherlen$E; then
    TL="$OUT/teacher_len/teacher/max_epochs=50"
    TLE=("${COMMON[@]}" --set trainer.check_val_every_n_epoch=10 --set trainer.max_epochs=$E
         --set "model.milestones=[$((E * 3 / 4))]" --teacher-weights "$TL/seed={seed}/final.ckpt" --reference "teacher=$TL")
    attrpreserve sweep --config $C/distill_div8_kd.yaml "${TLE[@]}" --out "$OUT/teacherlen${E}_kd"
    attrpreserve sweep --config $C/distill_div8_sswa.yaml --set callbacks.AttributionMatching.layer=conv5_3 \
      --set callbacks.AttributionMatching.target=per_label "${TLE[@]}" \
      --reference "KD=$OUT/teacherlen${E}_kd/distill_div8_kd" --out "$OUT/teacherlen${E}_sswa"
  fi
done
# The /8 student's width: vgg_small at twice the width (64-128-256-256), so its /8 keeps 32 channels at conv5_3
# (VGG16/8 keeps 64); teachers 50 epochs (step at 36), students as teacherlen100
WT="$OUT/wide_teachers/teacher/width_multiplier=2"
WS=("${COMMON[@]}" --set trainer.check_val_every_n_epoch=10 --set trainer.max_epochs=100 --set 'model.milestones=[75]'
    --set model.teacher.width_multiplier=2 --set model.student.width_multiplier=2
    --teacher-weights "$WT/seed={seed}/final.ckpt" --reference "teacher=$WT")
if step wide; then  # the wide teachers, their KD and SSWA students
  attrpreserve sweep --config $C/teacher.yaml --grid model.model.width_multiplier=2 --set trainer.max_epochs=50 \
    --set 'model.milestones=[36]' "${COMMON[@]}" --out "$OUT/wide_teachers"
  attrpreserve sweep --config $C/distill_div8_kd.yaml "${WS[@]}" --out "$OUT/wide_kd"
  attrpreserve sweep --config $C/distill_div8_sswa.yaml --set callbacks.AttributionMatching.layer=conv5_3 \
    --set callbacks.AttributionMatching.target=per_label "${WS[@]}" --reference "KD=$OUT/wide_kd/distill_div8_kd" \
    --out "$OUT/wide_sswa"
fi
if step widearms; then  # SWA and EWA with the wide networks (as step wide), against its KD students
  attrpreserve sweep --config $C/distill_div8_swa.yaml --config $C/distill_div8_ewa.yaml \
    --set callbacks.AttributionMatching.layer=conv5_3 --set callbacks.AttributionMatching.target=per_label "${WS[@]}" \
    --reference "KD=$OUT/wide_kd/distill_div8_kd" --out "$OUT/wide_arms"
fi
if step beta; then  # the matching weight
  attrpreserve sweep --config $C/distill_div8_sswa.yaml --grid callbacks.weight=10,1000 "${STUDENT[@]}" --out "$OUT/beta"
fi
if step drop; then  # SSWA's channel-drop probability
  attrpreserve sweep --config $C/distill_div8_sswa.yaml --grid callbacks.drop_prob=0.0,0.5 "${STUDENT[@]}" --out "$OUT/drop"
fi
if step report; then  # docs/study_synthetic.md and its plots: every step's table as the harness wrote it (DOC=...: another
  # file, for a round whose runs are all another OUT holds; docs/study_synthetic_4.md is the fourth round's)
  DOC=${DOC:-docs/study_synthetic.md}
  mkdir -p docs/study_synthetic
  {
    echo "# The synthetic ablation: the harness's tables"
    echo
    CMD="bash examples/synthetic_ablation.sh report"
    [ "$DOC" = docs/study_synthetic.md ] || CMD="DOC=$DOC $CMD"
    echo "Written by \`$CMD\` from the sweeps in \`$OUT\` (each table is that"
    echo "sweep's \`table.md\`, regenerated by rerunning its step); read with [study.md](study.md#results)."
    STEP_DIRS="teachers arms floor layer layer_beta epochs100_kd epochs100_sswa width_kd width_sswa head_teachers head_kd head_sswa target target60 head_target head100_kd head100_sswa target_beta arms100 epochs150_kd epochs150_sswa crop_kd crop_sswa_0.0 crop_sswa_0.5 online_kd online_sswa teacher_len teacherlen_kd teacherlen_sswa teacherlen100_kd teacherlen100_sswa teacherlen150_kd teacherlen150_sswa wide_teachers wide_kd wide_sswa wide_arms head150_kd head150_sswa beta drop"
    # shellcheck disable=SC2086
    python examples/synthetic_ablation/summary.py "$OUT" $STEP_DIRS
    for s in $STEP_DIRS; do
      [ -f "$OUT/$s/table.md" ] || continue
      echo; echo "## Step \`$s\`"; echo
      sed -e '1,2d' -e 's/^### /#### /' "$OUT/$s/table.md"
      if [ -f "$OUT/$s/sweep.png" ]; then
        cp "$OUT/$s/sweep.png" "docs/study_synthetic/$s.png"
        echo; echo "![$s](study_synthetic/$s.png)"
      fi
    done
  } > "$DOC"
fi
