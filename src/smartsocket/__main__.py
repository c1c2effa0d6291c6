from smartsocket.cli import main

raise SystemExit(main())
