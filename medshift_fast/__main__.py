from medshift_fast.cli import main

raise SystemExit(main())
