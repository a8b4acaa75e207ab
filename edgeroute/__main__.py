from edgeroute.tools.cli import main

raise SystemExit(main())
