"""The experiment machinery around the method in pini.py: datasets and their downloads, few-shot
samples, decoded images, epochs, jobs, options, run records, reports and published numbers.

pini.py imports nothing from here; train.py is the command that puts the two together."""
