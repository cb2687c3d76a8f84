specs=""
for s in 0 1; do
specs="$specs linear:lr=0.3:batch_size=32:seed=$s"
for sh in per-layer shared; do for r in 4 8; do for lr in 0.05 0.1; do specs="$specs nola:k=200:rank=$r:lr=$lr:sharing=$sh:batch_size=32:seed=$s"; done; done; done
done
/work/main/.venv/bin/python /tmp/a17/tune.py digits-rotated $specs
