from stadapt.cli import run

run()
