"""``calicoctl``: Calico's resource CLI against the calico-py datastore service.

``main.py`` parses arguments (Calico's verbs and flags) and maps every failure to one line on
stderr and exit status 1; ``commands/`` holds one module per verb group; ``output.py`` prints
tables, YAML and JSON as calicoctl does; ``config.py`` finds the datastore.
"""
