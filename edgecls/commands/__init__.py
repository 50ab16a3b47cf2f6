"""One module per `edgecls` command (click command + its terminal views), registered in edgecls.cli;
options.py: options shared by several commands; views.py: view helpers shared by several commands."""
