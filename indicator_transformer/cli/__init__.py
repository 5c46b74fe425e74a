"""One module per command, each with ``parser()``, ``run(args)`` and ``main()``."""
