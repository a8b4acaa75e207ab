from edgeroute.cli import main

raise SystemExit(main())
