from prefwatch.cli import main

raise SystemExit(main())
