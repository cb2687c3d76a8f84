specs=""
for s in 0 1; do
specs="$specs pranc:k=200:lr=0.05:batch_size=32:seed=$s pranc:k=200:lr=0.1:batch_size=32:seed=$s lora:rank=4:lr=0.01:batch_size=32:seed=$s lora:rank=4:lr=0.03:batch_size=32:seed=$s bitfit:lr=0.3:batch_size=32:seed=$s bitfit:lr=1.0:batch_size=32:seed=$s linear:lr=0.1:batch_size=32:seed=$s"
done
/work/main/.venv/bin/python /tmp/a17/tune.py digits-rotated $specs
