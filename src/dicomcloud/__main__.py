from dicomcloud.entrypoints.cli import main

raise SystemExit(main())
