specs=""
for lr in 0.3 1.0; do specs="$specs linear:lr=$lr bitfit:lr=$lr"; done
for r in 1 2 4 8; do for lr in 0.1 0.2 0.4; do specs="$specs nola:k=200:rank=$r:lr=$lr"; done; done
for lr in 0.05 0.2; do specs="$specs pranc:k=200:lr=$lr"; done
/work/main/.venv/bin/python /tmp/a17/tune.py digits-rotated $specs
