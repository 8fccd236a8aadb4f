from featherfl.cli import entry

entry()
