"""Review pages: ``fsdtrain report`` turns what runs wrote into one self-contained HTML file."""
