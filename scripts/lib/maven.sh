# shellcheck shell=bash
# Sourced by scripts/kafka.sh and scripts/keycloak.sh: fetch artifacts with Maven (mvn)
# from Maven Central only.

# maven_pom FILE ARTIFACT_ID [GROUP:ARTIFACT:VERSION...]: write a pom (packaging pom)
# whose only repository is Maven Central, with these dependencies and
# maven-dependency-plugin 3.8.1.
maven_pom() {
    local file=$1 id=$2 coord group artifact version deps=""
    shift 2
    for coord in "$@"; do
        IFS=: read -r group artifact version <<<"$coord"
        deps+="    <dependency>
      <groupId>$group</groupId>
      <artifactId>$artifact</artifactId>
      <version>$version</version>
    </dependency>
"
    done
    cat >"$file" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dicomcloud</groupId>
  <artifactId>$id</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <repositories>
    <repository><id>central</id><url>https://repo.maven.apache.org/maven2</url></repository>
  </repositories>
  <pluginRepositories>
    <pluginRepository><id>central</id><url>https://repo.maven.apache.org/maven2</url></pluginRepository>
  </pluginRepositories>
  <dependencies>
$deps  </dependencies>
  <build>
    <plugins>
      <plugin>
        <groupId>org.apache.maven.plugins</groupId>
        <artifactId>maven-dependency-plugin</artifactId>
        <version>3.8.1</version>
      </plugin>
    </plugins>
  </build>
</project>
EOF
}

# maven_run DIR GOAL [-Dname=value...]: mvn GOAL on DIR/pom.xml, its output in DIR/mvn.log;
# on failure the log's last 40 lines go to stderr and the status is 1.
maven_run() {
    local dir=$1
    shift
    if ! (cd "$dir" && mvn -B -q -f pom.xml "$@" >"$dir/mvn.log" 2>&1); then
        tail -40 "$dir/mvn.log" >&2
        return 1
    fi
}
